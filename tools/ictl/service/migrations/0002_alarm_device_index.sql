-- The overview counts each listed device's open alarms: index them by device.
CREATE INDEX alarms_device_open ON alarms (device_id, acked_at);
