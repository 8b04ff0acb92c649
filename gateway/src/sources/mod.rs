//! Inputs other than the MQTT source: sensors on the gateway's own I2C bus.

pub mod i2c;
