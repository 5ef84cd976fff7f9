# The agent's entry point (frozen into the firmware; on the unix port run by
# firmware/unix/start.py after boot.py).
import ironclad.agent

ironclad.agent.main()
