"""The sentistream command and the tooling around the runtime: local broker, demo, top, produce/consume."""
