"""The private runtime: planner, Ray actors, channels. Users never import it."""
