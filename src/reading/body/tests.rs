use super::*;

const NOW: i64 = 1_751_738_400_000;

fn sensor(s: &str) -> SensorId {
    s.parse().expect("valid sensor id")
}

/// Every combination of these field texts (`None`: the field is absent).
const SENSOR_IDS: &[Option<&str>] = &[
    None,
    Some("null"),
    Some(r#""m1""#),
    Some(r#""m\u0031""#),
    Some(r#""other""#),
    Some(r#""bad id""#),
    Some("5"),
];
const TIMESTAMPS: &[Option<&str>] = &[
    None,
    Some("null"),
    Some("1751738400"),
    Some("1751738400.5"),
    Some("1751738400000"),
    Some("-0"),
    Some("-5"),
    Some("1e300"),
    Some(r#""2025-07-05T18:00:00Z""#),
    Some(r#""2025-07-05T18:00:00""#),
    Some(r#""yesterday""#),
    Some("true"),
];
const VALUES: &[Option<&str>] = &[
    None,
    Some("null"),
    Some("1"),
    Some("-0"),
    Some("2.5"),
    Some("1e308"),
    Some(r#""1""#),
    Some("[1]"),
];
const UNITS: &[Option<&str>] = &[
    None,
    Some("null"),
    Some(r#""W""#),
    Some(r#""k\u0057h""#),
    Some(r#""""#),
    Some(r#""much-too-long-unit""#),
    Some("3"),
];
/// Text appended to the object: nothing, an unknown field, a repeated one.
const EXTRAS: &[&str] = &["", r#","vaule":2"#, r#","value":7"#];

/// Every combination as an object text, with whether it repeats a field.
fn objects() -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for s in SENSOR_IDS {
        for t in TIMESTAMPS {
            for v in VALUES {
                for u in UNITS {
                    for (i, extra) in EXTRAS.iter().enumerate() {
                        let fields: Vec<String> = [
                            ("sensor_id", s),
                            ("timestamp", t),
                            ("value", v),
                            ("unit", u),
                        ]
                        .into_iter()
                        .filter_map(|(name, text)| text.map(|x| format!("\"{name}\":{x}")))
                        .collect();
                        let text = format!("{{{}{}}}", fields.join(","), extra);
                        let text = text.replacen("{,", "{", 1);
                        out.push((text, i == 2 && v.is_some()));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_borrowed_read_takes_exactly_what_the_value_read_accepts() {
    let topic = sensor("m1");
    let mut taken = 0;
    for (text, repeats_a_field) in objects() {
        for topic in [None, Some(&topic)] {
            let borrowed = parse_borrowed(text.as_bytes(), topic, NOW, 10);
            let explained = parse_explained(text.as_bytes(), topic, NOW, 10);
            match (&borrowed, &explained) {
                (Some(Err(b)), _) => panic!("{text}: the first read refused an object: {b:?}"),
                (Some(Ok(b)), Ok(e)) => {
                    assert_eq!(b, e, "{text} (topic {topic:?})");
                    taken += 1;
                }
                (Some(Ok(b)), Err(e)) => {
                    panic!("{text}: first read took {b:?}, second refused: {e:?}")
                }
                (None, Ok(e)) => assert!(
                    repeats_a_field,
                    "{text} (topic {topic:?}): only the second read took {e:?}"
                ),
                (None, Err(_)) => {}
            }
        }
    }
    assert!(
        taken > 500,
        "only {taken} bodies were valid: the corpus is wrong"
    );
}

#[test]
fn arrays_agree_too_and_share_names() {
    let items = [
        r#"{"sensor_id":"a","value":1,"unit":"W"}"#,
        r#"{"sensor_id":"b","timestamp":"2025-07-05T18:00:00Z","value":2}"#,
        r#"{"sensor_id":"a","timestamp":1751738401,"value":3,"unit":"W"}"#,
    ];
    let body = format!("[{}]", items.join(","));
    let borrowed = parse_borrowed(body.as_bytes(), None, NOW, 10)
        .expect("first read takes it")
        .expect("valid");
    assert_eq!(
        Ok(&borrowed),
        parse_explained(body.as_bytes(), None, NOW, 10)
            .as_ref()
            .map_err(|e| format!("{e:?}"))
    );
    let Parsed::Many(readings) = borrowed else {
        panic!("an array gives many readings");
    };
    let keys: Vec<String> = readings.iter().map(|r| r.key.to_string()).collect();
    assert_eq!(
        keys,
        ["a:1751738400000", "b:1751738400000", "a:1751738401000"]
    );
    let unit = |i: usize| {
        readings[i]
            .sample
            .unit
            .as_ref()
            .map(|u| u.as_str().as_ptr())
    };
    assert_eq!(unit(0), unit(2), "one unit shared by the body's readings");
    assert_eq!(
        readings[0].key.sensor.as_str().as_ptr(),
        readings[2].key.sensor.as_str().as_ptr(),
        "one sensor id shared by the body's readings"
    );
}

#[test]
fn every_form_of_body() {
    let topic = sensor("m1");
    let one = parse_body(br#" {"sensor_id":"s","value":2}"#, None, NOW, 10).expect("object");
    assert!(matches!(one, Parsed::One(r) if r.key.to_string() == "s:1751738400000"));
    let bare = parse_body(b"42", Some(&topic), NOW, 10).expect("bare number on a topic");
    assert!(matches!(bare, Parsed::One(r) if r.sample.value == 42.0 && r.key.sensor == topic));
    let none = parse_body(b"[]", None, NOW, 10).expect("an empty array");
    assert_eq!(none, Parsed::Many(vec![]));
}

#[test]
fn refusals_say_what_and_where() {
    let topic = sensor("m1");
    let fault = |body: &[u8], topic| match parse_body(body, topic, NOW, 2) {
        Ok(parsed) => panic!("{body:?} accepted as {parsed:?}"),
        Err(e) => e,
    };
    assert!(matches!(fault(b"\xff", None), BodyError::NotUtf8(_)));
    assert!(matches!(fault(b"{nope", None), BodyError::NotJson(_)));
    let three =
        br#"[{"sensor_id":"s","value":1},{"sensor_id":"s","value":2},{"sensor_id":"s","value":3}]"#;
    assert!(matches!(fault(three, None), BodyError::TooMany { max: 2 }));
    match fault(
        br#"[{"sensor_id":"s","value":1},{"sensor_id":"s","value":"x"}]"#,
        None,
    ) {
        BodyError::Invalid {
            index: Some(1),
            readings: 2,
            error,
        } => assert_eq!(error.field, "value"),
        other => panic!("{other:?}"),
    }
    for (body, topic, field) in [
        (&b"42"[..], None, "reading"),
        (&b"\"text\""[..], Some(&topic), "payload"),
        (
            &br#"{"sensor_id":"x","value":1}"#[..],
            Some(&topic),
            "sensor_id",
        ),
    ] {
        match fault(body, topic) {
            BodyError::Invalid {
                index: None,
                readings: 1,
                error,
            } => assert_eq!(error.field, field, "{body:?}"),
            other => panic!("{body:?}: {other:?}"),
        }
    }
}

/// A hostile body costs a few of its items, not a tree of all of them: a
/// million empty objects is refused at the first, an array past the limit at
/// item `max + 1`, by both reads.
#[test]
fn arrays_are_refused_at_the_first_bad_item_or_past_the_limit() {
    let empties = format!("[{}{{}}]", "{},".repeat(1_000_000));
    match parse_body(empties.as_bytes(), None, NOW, 10_000) {
        Err(BodyError::Invalid {
            index: Some(0),
            readings: 1,
            error,
        }) => assert_eq!(error.field, "value"),
        other => panic!("{other:?}"),
    }
    let item = r#"{"sensor_id":"a","value":1}"#;
    let eleven = format!("[{}]", [item; 11].join(","));
    assert!(matches!(
        parse_body(eleven.as_bytes(), None, NOW, 10),
        Err(BodyError::TooMany { max: 10 })
    ));
    assert!(matches!(
        parse_explained(eleven.as_bytes(), None, NOW, 10),
        Err(BodyError::TooMany { max: 10 })
    ));
    let ten = format!("[{}]", [item; 10].join(","));
    assert!(matches!(
        parse_body(ten.as_bytes(), None, NOW, 10),
        Ok(Parsed::Many(readings)) if readings.len() == 10
    ));
    // An item past the limit is refused even if the array is broken later.
    let broken = format!("[{},{{]", [item; 11].join(","));
    assert!(matches!(
        parse_body(broken.as_bytes(), None, NOW, 10),
        Err(BodyError::TooMany { max: 10 })
    ));
}
