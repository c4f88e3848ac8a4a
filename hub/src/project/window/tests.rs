use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn window(kind: &str, schedule: &str, duration: &str) -> SyncWindow {
    SyncWindow {
        kind: kind.into(),
        schedule: schedule.into(),
        duration: duration.into(),
        applications: vec!["*".into()],
        ..Default::default()
    }
}

fn compiled(specs: Vec<SyncWindow>) -> Windows {
    Windows {
        windows: compile_all(&specs).unwrap(),
    }
}

const APP: Target<'static> = Target {
    app: "web",
    namespace: "shop",
    cluster_name: "east",
    cluster_server: "https://east.example",
};

#[test]
fn cron_fields() {
    let c = Cron::parse("*/15 9-17 * * mon-fri").unwrap();
    let utc = TimeZone::UTC;
    // Friday 17:45 → Monday 09:00.
    assert_eq!(
        c.next_after(ts("2026-12-04T17:45:00Z"), &utc),
        Some(ts("2026-12-07T09:00:00Z"))
    );
    // Strictly after: at 09:00 the next is 09:15.
    assert_eq!(
        c.next_after(ts("2026-12-07T09:00:00Z"), &utc),
        Some(ts("2026-12-07T09:15:00Z"))
    );
    assert_eq!(
        c.next_after(ts("2026-12-07T09:00:30Z"), &utc),
        Some(ts("2026-12-07T09:15:00Z"))
    );
    // Sunday as 7, day of month OR day of week when both are set.
    let c = Cron::parse("0 0 1 * 7").unwrap();
    assert_eq!(
        c.next_after(ts("2026-12-01T00:00:00Z"), &utc),
        Some(ts("2026-12-06T00:00:00Z"))
    );
    let c = Cron::parse("@daily").unwrap();
    assert_eq!(
        c.next_after(ts("2026-12-31T23:59:00Z"), &utc),
        Some(ts("2027-01-01T00:00:00Z"))
    );
    let c = Cron::parse("0 0 29 feb *").unwrap();
    assert_eq!(
        c.next_after(ts("2026-03-01T00:00:00Z"), &utc),
        Some(ts("2028-02-29T00:00:00Z"))
    );
    for bad in [
        "* * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "x * * * *",
        "@fortnightly",
        "0 0 31 2 *",
    ] {
        assert!(Cron::parse(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn go_durations() {
    let d = |s: &str| parse_duration(s).map(|d| d.as_secs());
    assert_eq!(d("1h"), Ok(3600));
    assert_eq!(d("30m"), Ok(1800));
    assert_eq!(d("1h30m"), Ok(5400));
    assert_eq!(d("90s"), Ok(90));
    assert_eq!(d("1.5h"), Ok(5400));
    assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
    for bad in ["", "1", "h", "1d", "-1h", "1h-", "1.2.3s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn a_window_crossing_midnight() {
    let w = compiled(vec![window("deny", "0 22 * * *", "4h")]);
    let win = &w.windows[0];
    assert_eq!(win.open_until(ts("2026-12-07T21:59:59Z")), None);
    assert_eq!(
        win.open_until(ts("2026-12-07T22:00:00Z")),
        Some(ts("2026-12-08T02:00:00Z"))
    );
    assert_eq!(
        win.open_until(ts("2026-12-08T01:59:59Z")),
        Some(ts("2026-12-08T02:00:00Z"))
    );
    assert_eq!(win.open_until(ts("2026-12-08T02:00:00Z")), None);
    // Openings inside an open window extend it.
    let w = compiled(vec![window("deny", "0 * * * *", "90m")]);
    let until = w.windows[0].open_until(ts("2026-12-07T10:30:00Z")).unwrap();
    assert!(until > ts("2026-12-14T00:00:00Z"), "{until}");
    let w = compiled(vec![window("deny", "0 10,11 * * *", "90m")]);
    assert_eq!(
        w.windows[0].open_until(ts("2026-12-07T10:30:00Z")),
        Some(ts("2026-12-07T12:30:00Z"))
    );
}

#[test]
fn time_zones_and_dst() {
    let mut spec = window("deny", "0 9 * * *", "1h");
    spec.time_zone = "Europe/Paris".into();
    let w = compiled(vec![spec]);
    let win = &w.windows[0];
    // Winter: UTC+1.
    assert!(win.open_until(ts("2026-12-07T08:30:00Z")).is_some());
    assert!(win.open_until(ts("2026-12-07T09:30:00Z")).is_none());
    // Summer: UTC+2.
    assert!(win.open_until(ts("2026-07-07T07:30:00Z")).is_some());
    assert!(win.open_until(ts("2026-07-07T08:30:00Z")).is_none());
    // A local time in the spring-forward gap (02:30 on 29 March 2026 does
    // not exist in Paris) fires when the gap ends, 03:00 CEST = 01:00Z.
    let c = Cron::parse("30 2 * * *").unwrap();
    let paris = TimeZone::get("Europe/Paris").unwrap();
    assert_eq!(
        c.next_after(ts("2026-03-28T23:00:00Z"), &paris),
        Some(ts("2026-03-29T01:30:00Z"))
    );
    // 02:30 occurs twice on 25 October 2026: it fires at the first.
    assert_eq!(
        c.next_after(ts("2026-10-24T23:00:00Z"), &paris),
        Some(ts("2026-10-25T00:30:00Z"))
    );
    let mut bad = window("deny", "0 9 * * *", "1h");
    bad.time_zone = "Mars/Olympus".into();
    let err = compile_all(&[bad]).unwrap_err();
    assert_eq!(err.0, "spec.syncWindows[0].timeZone");
}

#[test]
fn bad_windows_name_the_field() {
    let cases = [
        (
            window("maybe", "* * * * *", "1h"),
            "spec.syncWindows[0].kind",
        ),
        (
            window("deny", "* * *", "1h"),
            "spec.syncWindows[0].schedule",
        ),
        (
            window("deny", "* * * * *", "1 hour"),
            "spec.syncWindows[0].duration",
        ),
        (
            window("deny", "* * * * *", "0s"),
            "spec.syncWindows[0].duration",
        ),
    ];
    for (spec, field) in cases {
        assert_eq!(compile_all(&[spec]).unwrap_err().0, field);
    }
    // The second window is named by its index.
    let err = compile_all(&[
        window("deny", "* * * * *", "1h"),
        window("deny", "bad", "1h"),
    ])
    .unwrap_err();
    assert_eq!(err.0, "spec.syncWindows[1].schedule");
}

#[test]
fn deny_blocks_allow_limits_manual_passes_when_allowed() {
    let now = ts("2026-12-07T10:30:00Z");
    // An open deny window blocks, until it closes.
    let w = compiled(vec![window("deny", "0 10 * * *", "1h")]);
    let block = w.verdict(&APP, false, now).unwrap();
    assert_eq!(block.until, Some(ts("2026-12-07T11:00:00Z")));
    assert!(
        block.window.starts_with("deny window 0"),
        "{}",
        block.window
    );
    assert!(
        w.verdict(&APP, true, now).is_some(),
        "manual passes without manualSync"
    );
    let mut manual = window("deny", "0 10 * * *", "1h");
    manual.manual_sync = true;
    let w2 = compiled(vec![manual.clone()]);
    assert!(w2.verdict(&APP, false, now).is_some());
    assert_eq!(w2.verdict(&APP, true, now), None);
    // Two open denies: manual passes only when both allow it.
    let w3 = compiled(vec![manual, window("deny", "0 9 * * *", "2h")]);
    assert!(w3.verdict(&APP, true, now).is_some());
    // A closed deny window does not block.
    assert_eq!(w.verdict(&APP, false, ts("2026-12-07T11:00:00Z")), None);

    // Allow windows: sync only while one is open.
    let a = compiled(vec![window("allow", "0 12 * * *", "1h")]);
    let block = a.verdict(&APP, false, now).unwrap();
    assert_eq!(block.until, Some(ts("2026-12-07T12:00:00Z")));
    assert_eq!(a.verdict(&APP, false, ts("2026-12-07T12:10:00Z")), None);
    // Allow + deny open together: deny wins.
    let ad = compiled(vec![
        window("allow", "0 10 * * *", "2h"),
        window("deny", "0 10 * * *", "1h"),
    ]);
    let block = ad.verdict(&APP, false, now).unwrap();
    assert!(block.window.starts_with("deny window 1"));
    assert_eq!(block.until, Some(ts("2026-12-07T11:00:00Z")));
    assert_eq!(ad.verdict(&APP, false, ts("2026-12-07T11:30:00Z")), None);
    // Closed allow windows with manualSync let a manual sync through.
    let mut ma = window("allow", "0 12 * * *", "1h");
    ma.manual_sync = true;
    let ma = compiled(vec![ma]);
    assert!(ma.verdict(&APP, false, now).is_some());
    assert_eq!(ma.verdict(&APP, true, now), None);
}

#[test]
fn matching_and_the_and_operator() {
    let mut w = window("deny", "* * * * *", "1h");
    w.applications = vec!["web*".into()];
    w.clusters = vec!["west".into()];
    let now = ts("2026-12-07T10:30:00Z");
    // Or: the application matches.
    assert!(
        compiled(vec![w.clone()])
            .verdict(&APP, false, now)
            .is_some()
    );
    w.and_operator = true;
    // And: the cluster does not.
    assert_eq!(compiled(vec![w.clone()]).verdict(&APP, false, now), None);
    w.clusters = vec!["https://east.*".into()];
    assert!(
        compiled(vec![w.clone()])
            .verdict(&APP, false, now)
            .is_some()
    );
    w.namespaces = vec!["other".into()];
    assert_eq!(compiled(vec![w.clone()]).verdict(&APP, false, now), None);
    // Only namespaces set.
    let mut n = window("deny", "* * * * *", "1h");
    n.applications.clear();
    n.namespaces = vec!["sh*".into()];
    assert!(
        compiled(vec![n.clone()])
            .verdict(&APP, false, now)
            .is_some()
    );
    // No list set: matches nothing.
    n.namespaces.clear();
    assert_eq!(compiled(vec![n]).verdict(&APP, false, now), None);
    // An allow window for another application does not limit this one.
    let mut other = window("allow", "0 12 * * *", "1h");
    other.applications = vec!["db".into()];
    assert_eq!(compiled(vec![other]).verdict(&APP, false, now), None);
}

#[test]
fn next_change_is_the_next_open_or_close() {
    let w = compiled(vec![window("deny", "0 22 * * *", "4h")]);
    assert_eq!(
        w.next_change(None, ts("2026-12-07T12:00:00Z")),
        Some(ts("2026-12-07T22:00:00Z"))
    );
    assert_eq!(
        w.next_change(None, ts("2026-12-07T23:00:00Z")),
        Some(ts("2026-12-08T02:00:00Z"))
    );
}
