# The app image's entry point: the frozen boot.py runs it from the verified
# image mounted read-only at /app (`ictl image build app`).
import agent

agent.main()
