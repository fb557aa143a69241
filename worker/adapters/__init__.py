"""The service's adapters to Kafka and Redis (how it connects, and how it waits for them), and
to the Prometheus client.

- kafka.py: aiokafka consumers, producers and admin clients as the worker and tools build
  them, topic creation, reading a partition outside the consumer group;
- security.py: the Kafka TLS/SASL flags and environment variables (kronos_rt_client.security
  holds KafkaSecurity itself);
- kafka_logs.py: aiokafka's lines for expected trouble (retries, rebalances) at DEBUG;
- redis_connect.py: every Redis client, from one URL: a server, Sentinel or a Cluster
  (redis-py's own clients), with its topology and the node in use;
- keys.py: the Redis key schema, one hash tag per symbol;
- histograms.py: many observations of one Prometheus histogram at once (a batch's figures);
- waiting.py: waiting out a broker or Redis that does not answer yet.

May import: worker.errors, worker.contracts, kronos_rt_client; never the pipeline above it.
"""
