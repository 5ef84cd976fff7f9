# The agent's main job. First version: read the broker settings from the
# device's filesystem, connect over mutual TLS and publish readings.
import time


def main():
    print("ironclad: agent starting")
    while True:
        time.sleep(1)
