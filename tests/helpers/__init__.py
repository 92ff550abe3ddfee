"""What the tests share: waiting for a condition (support), the servers tests start (servers:
S3 on moto, PostgreSQL, a Kafka-protocol broker), and clients of PostgreSQL and Kafka
(postgres, kafka)."""
