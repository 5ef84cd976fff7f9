"""The fleet service (issue 16): stored telemetry, staged rollouts, web console.

Modules: db (connections and migrations), ingest (the MQTT workers), store (reads
for the pages), rollout, fleetops, alarms, retention; web/ is the console."""
