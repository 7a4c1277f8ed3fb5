"""A real Apache Kafka (KRaft) on loopback, from Maven Central's jars: what `sentistream broker`,
the demo, the benchmarks and the tests start when no cluster is configured."""
