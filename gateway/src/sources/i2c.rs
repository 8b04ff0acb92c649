//! Sensors on the gateway's own I2C bus (`i2c = { … }` on a `[[stream]]`).
//!
//! Drivers are generic over the embedded-hal 1.0 traits, so they run against
//! Linux's `/dev/i2c-*` (feature `i2c`, `linux-embedded-hal`) and against
//! `embedded-hal-mock` in tests alike. A reading becomes a message of the
//! stream's own internal topic (`local/i2c/<stream>`) with a JSON payload, so
//! it goes through exactly the same path as an MQTT message — write-ahead log,
//! decoding, watermarks, windows, joins — stamped with the receive time
//! (`clock = "receive"`). Reads happen on a dedicated thread (the bus is
//! blocking); errors are counted and retried with backoff, never fatal.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

pub use crate::backoff::Backoff;
use crate::config::SensorModel;

/// Why a reading failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError<E: core::fmt::Debug> {
    #[error("bus error: {0:?}")]
    Bus(E),
    #[error("checksum mismatch (noise on the bus)")]
    Crc,
}

/// CRC-8 of the SHT3x (polynomial 0x31, init 0xFF).
pub fn sht3x_crc(data: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 { (crc << 1) ^ 0x31 } else { crc << 1 };
        }
    }
    crc
}

/// A Sensirion SHT3x in single-shot mode (high repeatability, no clock stretching).
pub struct Sht3x<I, D> {
    i2c: I,
    delay: D,
    address: u8,
}

impl<I: I2c, D: DelayNs> Sht3x<I, D> {
    pub fn new(i2c: I, delay: D, address: u8) -> Self {
        Sht3x { i2c, delay, address }
    }

    /// Measures: (°C, % relative humidity).
    pub fn read(&mut self) -> Result<(f64, f64), ReadError<I::Error>> {
        self.i2c.write(self.address, &[0x24, 0x00]).map_err(ReadError::Bus)?;
        // a high-repeatability measurement takes up to 15.5 ms
        self.delay.delay_ms(16);
        let mut buf = [0u8; 6];
        self.i2c.read(self.address, &mut buf).map_err(ReadError::Bus)?;
        if sht3x_crc(&buf[0..2]) != buf[2] || sht3x_crc(&buf[3..5]) != buf[5] {
            return Err(ReadError::Crc);
        }
        let t = u16::from_be_bytes([buf[0], buf[1]]) as f64;
        let rh = u16::from_be_bytes([buf[3], buf[4]]) as f64;
        Ok((-45.0 + 175.0 * t / 65535.0, 100.0 * rh / 65535.0))
    }

    /// Gives the bus back (tests check the mock's expectations through it).
    pub fn release(self) -> I {
        self.i2c
    }
}

/// The JSON payload of a reading.
pub fn payload(fields: &[&str], values: &[f64]) -> String {
    let mut s = String::from("{");
    for (i, (f, v)) in fields.iter().zip(values).enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("\"{f}\":{}", (v * 1000.0).round() / 1000.0));
    }
    s.push('}');
    s
}

/// One step of a reader: a reading as a payload, or how long to wait after a
/// counted error.
pub fn poll<I: I2c, D: DelayNs>(
    sensor: &mut Sht3x<I, D>,
    backoff: &mut Backoff,
    errors: &mut u64,
) -> Result<String, u64> {
    match sensor.read() {
        Ok((t, rh)) => {
            backoff.reset();
            Ok(payload(SensorModel::Sht3x.fields(), &[t, rh]))
        }
        Err(_) => {
            *errors += 1;
            Err(backoff.wait().as_millis() as u64)
        }
    }
}

#[cfg(feature = "i2c")]
pub mod linux {
    //! The reader thread on Linux's `/dev/i2c-*`.
    use std::time::Duration;

    use super::*;
    use crate::config::{i2c_topic, I2cSource};

    /// Reads `src` every period until `send` fails (the service stopped);
    /// `errors` is told of failed reads and failed opens.
    pub fn run(
        stream: String,
        src: I2cSource,
        mut send: impl FnMut(String, String) -> bool,
        errors: impl Fn(u64),
    ) {
        let topic = i2c_topic(&stream);
        let mut backoff = Backoff::default();
        loop {
            let dev = match linux_embedded_hal::I2cdev::new(&src.bus) {
                Ok(d) => d,
                Err(e) => {
                    errors(1);
                    let wait = backoff.wait().as_millis() as u64;
                    tracing::warn!(
                        "i2c {}: cannot open {}: {e}; retrying in {wait} ms",
                        stream,
                        src.bus.display()
                    );
                    std::thread::sleep(Duration::from_millis(wait));
                    continue;
                }
            };
            let mut sensor = Sht3x::new(dev, linux_embedded_hal::Delay, src.address);
            let mut failures = 0u64;
            loop {
                let mut n = 0u64;
                match poll(&mut sensor, &mut backoff, &mut n) {
                    Ok(p) => {
                        failures = 0;
                        if !send(topic.clone(), p) {
                            return;
                        }
                        std::thread::sleep(src.period);
                    }
                    Err(wait) => {
                        errors(n);
                        failures += 1;
                        tracing::warn!("i2c {}: read failed; retrying in {wait} ms", stream);
                        std::thread::sleep(Duration::from_millis(wait));
                        if failures >= 5 {
                            break; // reopen the device
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    /// The bytes an SHT3x answers for raw readings `t` and `rh`.
    pub fn answer(t: u16, rh: u16) -> Vec<u8> {
        let (a, b) = (t.to_be_bytes(), rh.to_be_bytes());
        vec![a[0], a[1], sht3x_crc(&a), b[0], b[1], sht3x_crc(&b)]
    }

    #[test]
    fn crc_matches_the_datasheet() {
        assert_eq!(sht3x_crc(&[0xBE, 0xEF]), 0x92);
    }

    #[test]
    fn reads_temperature_and_humidity() {
        let i2c = Mock::new(&[
            Transaction::write(0x44, vec![0x24, 0x00]),
            Transaction::read(0x44, answer(0x6666, 0x8000)),
        ]);
        let mut s = Sht3x::new(i2c, NoopDelay, 0x44);
        let (t, rh) = s.read().unwrap();
        assert!((t - 25.0).abs() < 0.01, "{t}");
        assert!((rh - 50.0).abs() < 0.01, "{rh}");
        s.release().done();
    }

    #[test]
    fn bad_checksums_and_bus_errors_are_counted_and_backed_off() {
        let mut bad = answer(0x6666, 0x8000);
        bad[2] ^= 1;
        let i2c = Mock::new(&[
            Transaction::write(0x44, vec![0x24, 0x00]),
            Transaction::read(0x44, bad),
            Transaction::write(0x44, vec![0x24, 0x00]).with_error(embedded_hal::i2c::ErrorKind::Bus),
            Transaction::write(0x44, vec![0x24, 0x00]),
            Transaction::read(0x44, answer(0x6666, 0x8000)),
        ]);
        let mut s = Sht3x::new(i2c, NoopDelay, 0x44);
        let mut backoff = Backoff::default();
        let mut errors = 0;
        assert_eq!(poll(&mut s, &mut backoff, &mut errors), Err(100));
        assert_eq!(poll(&mut s, &mut backoff, &mut errors), Err(200));
        assert_eq!(errors, 2);
        let p = poll(&mut s, &mut backoff, &mut errors).unwrap();
        assert_eq!(p, r#"{"celsius":25,"humidity":50.001}"#);
        assert_eq!(backoff.wait().as_millis(), 100, "a success resets the backoff");
        s.release().done();
    }
}
