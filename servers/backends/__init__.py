"""The echo backends, one module each, every one meeting `servers.contract` and named in
`servers.registry`: `threaded` (a thread per connection), `selector_loop` (epoll, poll or select),
`asyncio_loop` (stdlib asyncio) and `uvloop_loop` (the same protocol on libuv)."""
