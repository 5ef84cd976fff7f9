# One esp32.NVS handle per namespace for the life of the boot.
#
# MicroPython's esp32.NVS(ns) calls nvs_open() and never nvs_close(): the port
# has no close method and no finaliser (ports/esp32/esp32_nvs.c, v1.28.0), so
# every NVS(ns) keeps an entry in the IDF's handle list, in the IDF heap, for
# good. Opened on every call (the clock's floor, every 5 minutes), handles
# pile up until that heap is spent and TLS and NVS writes fail. Every module
# of the agent opens its namespace here instead: the first call opens it, the
# rest share that handle.
#
# Sharing is safe as each user commits what it sets before it returns; what one
# stages, the other would read (as it would through two IDF handles).
_open = {}


def open(ns):
    """The handle for namespace ns, opened at the first call."""
    h = _open.get(ns)
    if h is None:
        import esp32

        h = _open[ns] = esp32.NVS(ns)
    return h
