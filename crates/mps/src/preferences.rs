//! Users' preferences about vendor push and e-mail: muted components and channels, and quiet
//! hours. A muted message is still stored and delivered to live connections; only the push
//! through APNs, FCM or Web Push and the e-mail are left out. The vendor fallback asks
//! [`Muting::mutes`] per device, the e-mail channel per recipient.

use mps_proto::{Preferences, PreferencesRequest, QuietHours};

use crate::words::{Channel, Way, check_name};

/// Most muted components per user.
pub const MAX_MUTED: usize = 256;

/// Checks a request and turns it into what is stored; the message says what is wrong.
pub fn check(request: PreferencesRequest) -> Result<Preferences, String> {
    if request.muted_components.len() > MAX_MUTED {
        return Err(format!("at most {MAX_MUTED} muted components"));
    }
    let mut components = request.muted_components;
    for component in &components {
        check_name("component", component).map_err(|e| e.to_string())?;
    }
    components.sort_unstable();
    components.dedup();
    let mut channels = request.muted_channels;
    for channel in &channels {
        if Way::parse(channel).is_none() && Channel::parse(channel) != Some(Channel::Email) {
            return Err(format!(
                "muted channel {channel:?} is not one of apns, fcm, webpush, email"
            ));
        }
    }
    channels.sort_unstable();
    channels.dedup();
    if let Some(quiet) = &request.quiet_hours {
        Quiet::parse(quiet)?;
    }
    crate::words::check_chain(&request.channels, u64::MAX)?;
    Ok(Preferences {
        muted_components: components,
        muted_channels: channels,
        quiet_hours: request.quiet_hours,
        channels: request.channels,
    })
}

/// Quiet hours in minutes: local start and end of day, and the offset from UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quiet {
    start: i64,
    end: i64,
    offset: i64,
}

/// Minutes of a `HH:MM` time of day.
fn minutes(text: &str) -> Option<i64> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
}

impl Quiet {
    fn parse(quiet: &QuietHours) -> Result<Quiet, String> {
        let time = |what: &str, text: &str| {
            minutes(text).ok_or_else(|| format!("quiet_hours.{what} must be HH:MM, not {text:?}"))
        };
        let (start, end) = (time("start", &quiet.start)?, time("end", &quiet.end)?);
        if start == end {
            return Err("quiet_hours.start and end must differ".into());
        }
        let offset = match quiet.utc_offset.as_deref() {
            None => 0,
            Some(text) => {
                let bad =
                    || format!("quiet_hours.utc_offset must be +HH:MM or -HH:MM, not {text:?}");
                let (sign, rest) = match text.split_at_checked(1) {
                    Some(("+", rest)) => (1, rest),
                    Some(("-", rest)) => (-1, rest),
                    _ => return Err(bad()),
                };
                let minutes = minutes(rest).filter(|m| *m <= 14 * 60).ok_or_else(bad)?;
                sign * minutes
            }
        };
        Ok(Quiet { start, end, offset })
    }

    /// Whether the user's local time at `now` (Unix ms) is within the quiet hours.
    fn holds(self, now: i64) -> bool {
        let local = (now.div_euclid(60_000) + self.offset).rem_euclid(24 * 60);
        if self.start < self.end {
            (self.start..self.end).contains(&local)
        } else {
            local >= self.start || local < self.end
        }
    }
}

/// Why a push is left out, if it is.
pub trait Muting {
    /// The reason (a metrics label) a message of `component` is not sent through `channel`
    /// (`apns`, `fcm`, `webpush`, `email`) at `now` (Unix ms); `None` when it may be.
    fn mutes(&self, component: Option<&str>, channel: &str, now: i64) -> Option<&'static str>;
}

impl Muting for Preferences {
    fn mutes(&self, component: Option<&str>, channel: &str, now: i64) -> Option<&'static str> {
        if self.muted_channels.iter().any(|c| c == channel) {
            return Some("channel");
        }
        if component.is_some_and(|c| self.muted_components.iter().any(|m| m == c)) {
            return Some("component");
        }
        // Stored preferences were checked; one that no longer parses mutes nothing.
        let quiet = self.quiet_hours.as_ref().and_then(|q| Quiet::parse(q).ok());
        if quiet.is_some_and(|q| q.holds(now)) {
            return Some("quiet_hours");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(start: &str, end: &str, offset: Option<&str>) -> QuietHours {
        QuietHours {
            start: start.into(),
            end: end.into(),
            utc_offset: offset.map(str::to_owned),
        }
    }

    /// Unix ms of a UTC time of day (on 1970-01-02).
    fn at(h: i64, m: i64) -> i64 {
        ((24 + h) * 60 + m) * 60_000
    }

    #[test]
    fn checks_requests() {
        let ok = check(PreferencesRequest {
            muted_components: vec!["oa".into(), "esbm".into(), "oa".into()],
            muted_channels: vec!["fcm".into()],
            quiet_hours: Some(quiet("22:00", "07:00", Some("+08:00"))),
            ..PreferencesRequest::default()
        })
        .unwrap();
        assert_eq!(ok.muted_components, ["esbm", "oa"]);
        for bad in [
            PreferencesRequest {
                muted_channels: vec!["sms".into()],
                ..PreferencesRequest::default()
            },
            PreferencesRequest {
                muted_components: vec!["".into()],
                ..PreferencesRequest::default()
            },
            PreferencesRequest {
                quiet_hours: Some(quiet("25:00", "07:00", None)),
                ..PreferencesRequest::default()
            },
            PreferencesRequest {
                quiet_hours: Some(quiet("7:00", "08:00", None)),
                ..PreferencesRequest::default()
            },
            PreferencesRequest {
                channels: vec!["pigeon".into()],
                ..PreferencesRequest::default()
            },
            PreferencesRequest {
                channels: vec!["email".into(), "email".into()],
                ..PreferencesRequest::default()
            },
            PreferencesRequest {
                quiet_hours: Some(quiet("07:00", "07:00", None)),
                ..PreferencesRequest::default()
            },
            PreferencesRequest {
                quiet_hours: Some(quiet("22:00", "07:00", Some("08:00"))),
                ..PreferencesRequest::default()
            },
            PreferencesRequest {
                quiet_hours: Some(quiet("22:00", "07:00", Some("+15:00"))),
                ..PreferencesRequest::default()
            },
        ] {
            assert!(check(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mutes_channels_components_and_quiet_hours() {
        let prefs = Preferences {
            muted_components: vec!["oa".into()],
            muted_channels: vec!["webpush".into()],
            quiet_hours: Some(quiet("22:00", "07:00", Some("+08:00"))),
            channels: Vec::new(),
        };
        let noon_beijing = at(4, 0);
        assert_eq!(prefs.mutes(Some("esbm"), "apns", noon_beijing), None);
        assert_eq!(prefs.mutes(None, "apns", noon_beijing), None);
        assert_eq!(
            prefs.mutes(Some("esbm"), "webpush", noon_beijing),
            Some("channel")
        );
        assert_eq!(
            prefs.mutes(Some("oa"), "fcm", noon_beijing),
            Some("component")
        );
        // 23:30 and 06:59 in Beijing are quiet; 07:00 is not.
        assert_eq!(prefs.mutes(None, "apns", at(15, 30)), Some("quiet_hours"));
        assert_eq!(prefs.mutes(None, "apns", at(22, 59)), Some("quiet_hours"));
        assert_eq!(prefs.mutes(None, "apns", at(23, 0)), None);
        // Within one day, and west of UTC.
        let day = Preferences {
            quiet_hours: Some(quiet("09:00", "17:00", Some("-05:30"))),
            ..Preferences::default()
        };
        assert_eq!(day.mutes(None, "fcm", at(14, 30)), Some("quiet_hours"));
        assert_eq!(day.mutes(None, "fcm", at(22, 30)), None);
        assert_eq!(Preferences::default().mutes(Some("oa"), "fcm", 0), None);
    }
}
