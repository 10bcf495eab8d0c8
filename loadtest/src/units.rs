//! Parsing and printing of the small values the command line takes: durations (`25ms`, `1.5s`, `500us`)
//! and `FRAMESxPOINTS` shapes.

use std::time::Duration;

use thiserror::Error;

/// A value on the command line that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// A duration without a known unit or with a bad number.
    #[error("`{0}` is not a duration: write a number and a unit (us, ms, s, m), e.g. 25ms")]
    Duration(String),
    /// A `FRAMESxPOINTS` shape with a missing or zero side.
    #[error("`{0}` is not a shape: write FRAMESxPOINTS with two positive numbers, e.g. 30x21")]
    Shape(String),
}

/// Reads a duration such as `25ms`, `1.5s`, `500us`, `2m` or `0.5ms`. A bare number is refused, because a
/// unit forgotten on a latency target is a silent factor of 1000.
///
/// # Errors
/// [`ParseError::Duration`] when the number or the unit is missing or unknown, or the value is negative.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let bad = || ParseError::Duration(text.to_string());
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| c.is_ascii_alphabetic() || c == 'µ').ok_or_else(bad)?;
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds_per_unit = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| bad())
}

/// Reads `FRAMESxPOINTS` (`30x21`).
///
/// # Errors
/// [`ParseError::Shape`] when a side is missing, not a number or zero.
pub fn parse_shape(text: &str) -> Result<(usize, usize), ParseError> {
    let bad = || ParseError::Shape(text.to_string());
    let (frames, points) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    let frames: usize = frames.trim().parse().map_err(|_| bad())?;
    let points: usize = points.trim().parse().map_err(|_| bad())?;
    if frames == 0 || points == 0 {
        return Err(bad());
    }
    Ok((frames, points))
}

/// A duration in milliseconds as a float, the unit every report uses.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Prints a duration compactly for tables and verdicts: `850us`, `25ms`, `1.5ms`, `2s`.
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{}us", trim_float(micros, 0))
    } else if micros < 1e6 {
        format!("{}ms", trim_float(micros / 1e3, 3))
    } else {
        format!("{}s", trim_float(micros / 1e6, 3))
    }
}

/// Prints a number with at most `decimals` decimals and no trailing zeros (`2`, `2.5`, `0.125`).
pub fn trim_float(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("25ms"), Ok(Duration::from_millis(25)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("0.5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("25").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1ms").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn shapes() {
        assert_eq!(parse_shape("30x21"), Ok((30, 21)));
        assert!(parse_shape("30x0").is_err());
        assert!(parse_shape("30").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(Duration::from_millis(25)), "25ms");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(format_duration(Duration::from_micros(850)), "850us");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(trim_float(2.50, 3), "2.5");
        assert_eq!(trim_float(16.0, 3), "16");
    }
}
