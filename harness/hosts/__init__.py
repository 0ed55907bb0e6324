"""Test hosts: network namespaces that stand in for separate machines (their own interfaces,
addresses from 198.18.0.0/15, routing, ephemeral port range and TCP sysctls), joined by one
bridge, so Locust workers and servers can run "on other hosts" with every packet crossing a real
network interface. `layout` is the pure address plan; `netns` makes and removes them; `faults`
puts loss, rate limits and link outages on their links."""
