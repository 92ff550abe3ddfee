"""What both generators share: the event types, the proportions and id spaces, and the
pools strings are drawn from. One copy, so that the per-record and the columnar generator
cannot drift apart."""
from __future__ import annotations

from typing import NamedTuple

from raystream.connectors.nexmark.config import NexmarkConfig

PROPORTION = (1, 3, 46)  # person, auction, bid
TOTAL = sum(PROPORTION)
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
PERSON_ID_LEAD = 10
AUCTION_ID_LEAD = 10
HOT_AUCTION_RATIO = 100  # hot auction / seller / bidder ids are multiples of these
HOT_SELLER_RATIO = 100
HOT_BIDDER_RATIO = 100
STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
CITIES = ("Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle",
          "Kent", "Cheyenne")
FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris")
CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
URLS = tuple(f"https://www.nexmark.com/{channel.lower()}/item.htm?query=1" for channel in CHANNELS)
SEED_MULTIPLIER = 0x100000001B3  # an event's stream starts at splitmix64(seed * this + n)


class Person(NamedTuple):
    id: int
    name: str
    email_address: str
    credit_card: str
    city: str
    state: str
    date_time: int  # milliseconds since the epoch


class Auction(NamedTuple):
    id: int
    item_name: str
    description: str
    initial_bid: int
    reserve: int
    date_time: int
    expires: int
    seller: int
    category: int


class Bid(NamedTuple):
    auction: int
    bidder: int
    price: int
    channel: str
    url: str
    date_time: int


def expiry_bound(c: NexmarkConfig) -> int:
    """An auction expires 1 to this many milliseconds after it opens: about twice as long
    as it takes in_flight_auctions more to open (as in the standard generator)."""
    horizon = int(c.in_flight_auctions * TOTAL / PROPORTION[1] * 1000 / c.event_rate)
    return max(horizon * 2, 1)
