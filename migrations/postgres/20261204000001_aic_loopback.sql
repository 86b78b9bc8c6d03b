-- AIC loopback: a room's AIC tracks also published back, after the codec, so people can hear it.
ALTER TABLE aic_configs ADD COLUMN loopback BIGINT NOT NULL DEFAULT 0 CHECK (loopback IN (0, 1));
