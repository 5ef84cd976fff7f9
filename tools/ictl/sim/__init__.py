"""The simulation: virtual boards on the MicroPython unix port (the device
directory, its pty, the firmware tree they boot), fault injection, a hostile
broker, and the labs and rigs the tests, benchmarks and campaigns share.
Nothing in the product modules above imports from here."""
