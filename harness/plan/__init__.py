"""Planning: the machine's limits read from the kernel (`limits`), and the pure plan built on them
(`core`: server processes, Locust workers, source addresses, the caps and which one binds, and
why), the ramp rule the load shape follows (`ramp`) and the line fitted through a sweep (`fits`).
Only `limits` touches the system; everything else is a function of plain dicts and numbers."""
