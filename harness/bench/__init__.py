"""Benchmarks, one module per question: echo throughput, memory per connection and N held on one
port (`servers`), the idle-connection tax (`idle`), and throughput beside a C reference
(`reference`). Each measures real server processes with the lean clients of `harness.clients`."""
