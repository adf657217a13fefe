//! UTC calendar arithmetic for budgets: the day and month a moment falls in, and how long
//! until the next one starts (a budget's Retry-After). Civil-from-days is Howard Hinnant's
//! algorithm, exact for the proleptic Gregorian calendar.

/// Days since 1970-01-01 → (year, month 1–12, day 1–31).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The budget periods a moment (Unix seconds) falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// `YYYYMMDD`.
    pub day: u32,
    /// `YYYYMM`.
    pub month: u32,
    /// Seconds until the next day and the next month start.
    pub day_left_s: u64,
    pub month_left_s: u64,
}

impl Period {
    pub fn at(unix_s: u64) -> Self {
        let days = (unix_s / 86_400) as i64;
        let (y, m, d) = civil(days);
        let next_day = (days + 1) * 86_400;
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let next_month = days_from_civil(ny, nm, 1) * 86_400;
        Self {
            day: (y * 10_000) as u32 + m * 100 + d,
            month: (y * 100) as u32 + m,
            day_left_s: (next_day as u64).saturating_sub(unix_s),
            month_left_s: (next_month as u64).saturating_sub(unix_s),
        }
    }

    pub fn now() -> Self {
        Self::at(crate::records::now_ms() / 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        // 2026-12-06 00:00:00 UTC
        let p = Period::at(1_796_515_200);
        assert_eq!((p.day, p.month), (20261206, 202612));
        assert_eq!(p.day_left_s, 86_400);
        assert_eq!(p.month_left_s, 26 * 86_400);
        // Leap day and the end of a year.
        assert_eq!(civil(days_from_civil(2028, 2, 29)), (2028, 2, 29));
        let p = Period::at(days_from_civil(2026, 12, 31) as u64 * 86_400 + 86_399);
        assert_eq!((p.day, p.month, p.month_left_s), (20261231, 202612, 1));
    }

    #[test]
    fn round_trips_every_day_for_four_centuries() {
        for days in (-200_000..200_000).step_by(7) {
            let (y, m, d) = civil(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
