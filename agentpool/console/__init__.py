"""The web console: fleet, pools, tasks and dead letters in a browser, live.

`agentpool console` serves it (aiohttp). Every asset ships in this package (no CDN, no
build step). Each page's data is read by one refresher however many browsers watch it, and
pushed to them over Server-Sent Events. Read-only unless write actions are enabled with a
token.
"""
