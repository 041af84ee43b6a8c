//! Request bodies: distinct destinations, a configurable text mix, unique transaction ids, and
//! the HTTP/1.1 request bytes written into a reused buffer.

use std::fmt::Write as _;

use super::LoadgenError;

/// The kinds of text the generator sends, chosen to hit different encoder paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// One GSM 03.38 part.
    Gsm7,
    /// One UCS-2 part (Cyrillic).
    Ucs2,
    /// A GSM 03.38 text of 400 characters: three concatenated parts.
    Multipart,
    /// A UCS-2 text of 200 characters: three concatenated parts.
    MultipartUcs2,
}

impl TextKind {
    const ALL: [TextKind; 4] = [
        TextKind::Gsm7,
        TextKind::Ucs2,
        TextKind::Multipart,
        TextKind::MultipartUcs2,
    ];

    fn name(self) -> &'static str {
        match self {
            TextKind::Gsm7 => "gsm7",
            TextKind::Ucs2 => "ucs2",
            TextKind::Multipart => "multipart",
            TextKind::MultipartUcs2 => "multipart-ucs2",
        }
    }

    /// The message text of this kind.
    pub fn text(self) -> String {
        match self {
            TextKind::Gsm7 => {
                "Your verification code is 482913. It expires in 5 minutes. Do not share it."
                    .to_owned()
            }
            TextKind::Ucs2 => "Ваш код подтверждения: 482913. Никому его не сообщайте.".to_owned(),
            TextKind::Multipart => {
                let unit = "Dear customer, your parcel 7731 is out for delivery today. ";
                unit.chars().cycle().take(400).collect()
            }
            TextKind::MultipartUcs2 => {
                let unit = "Уважаемый клиент, ваша посылка 7731 будет доставлена сегодня. ";
                unit.chars().cycle().take(200).collect()
            }
        }
    }
}

/// Weighted mix of text kinds, as an exact repeating sequence: over any window of `W`
/// consecutive requests (W = sum of weights) each kind appears exactly its weight times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMix {
    sequence: Vec<TextKind>,
}

/// Upper bound on the sum of weights, which is the length of the precomputed sequence.
const MAX_MIX_WEIGHT_SUM: u32 = 10_000;

impl TextMix {
    /// Parse `gsm7=70,ucs2=20,multipart=10` (also `multipart-ucs2=N`).
    pub fn parse(spec: &str) -> Result<Self, LoadgenError> {
        let bad = |why: String| LoadgenError::InvalidArgument {
            what: "--text-mix",
            why,
        };
        let mut weights: Vec<(TextKind, u32)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not KIND=WEIGHT")))?;
            let kind = TextKind::ALL
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| {
                    bad(format!(
                        "unknown kind `{name}` (known: gsm7, ucs2, multipart, multipart-ucs2)"
                    ))
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| bad(format!("weight `{weight}` is not a whole number")))?;
            if weights.iter().any(|(k, _)| *k == kind) {
                return Err(bad(format!("kind `{name}` given twice")));
            }
            if weight > 0 {
                weights.push((kind, weight));
            }
        }
        let sum: u32 = weights.iter().map(|(_, w)| *w).sum();
        if sum == 0 {
            return Err(bad("no kind has a weight above zero".to_owned()));
        }
        if sum > MAX_MIX_WEIGHT_SUM {
            return Err(bad(format!(
                "weights sum to {sum}, at most {MAX_MIX_WEIGHT_SUM}"
            )));
        }
        // Smooth weighted round-robin gives an evenly interleaved sequence rather than
        // long runs of one kind.
        let mut current: Vec<i64> = vec![0; weights.len()];
        let mut sequence = Vec::with_capacity(sum as usize);
        for _ in 0..sum {
            let mut best = 0;
            for (i, (_, w)) in weights.iter().enumerate() {
                current[i] += i64::from(*w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= i64::from(sum);
            sequence.push(weights[best].0);
        }
        Ok(Self { sequence })
    }

    /// Kind used for global request slot `g`.
    pub fn kind_for(&self, g: u64) -> TextKind {
        self.sequence[(g % self.sequence.len() as u64) as usize]
    }

    /// Kinds that occur in the mix.
    pub fn kinds(&self) -> Vec<TextKind> {
        TextKind::ALL
            .into_iter()
            .filter(|k| self.sequence.contains(k))
            .collect()
    }
}

/// What goes into every request.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    /// `POST ... HTTP/1.1\r\n` plus the fixed headers, ending before `Content-Length`.
    head: Vec<u8>,
    /// `{"esme":N,"source":"...","destination":"`
    body_start: Vec<u8>,
    destination_base: u64,
    destinations: u64,
    /// JSON-escaped text per kind, indexed like `TextKind::ALL`.
    texts: [Vec<u8>; 4],
    mix: TextMix,
    /// Transaction id prefix unique to this run, so reruns do not collide in the store.
    txid_prefix: String,
    /// Messages per request in batch mode (`{"messages":[...]}`); 0 = one send per request.
    batch: usize,
}

/// Inputs for [`RequestTemplate::new`].
#[derive(Debug, Clone)]
pub struct TemplateSpec<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub esme: u64,
    pub source: &'a str,
    pub destination_base: u64,
    pub destinations: u64,
    pub mix: TextMix,
    pub run_id: &'a str,
    /// Messages per request for the batch submit; 0 = single sends.
    pub batch: usize,
}

fn json_string_inner(s: &str) -> Vec<u8> {
    // serde_json escapes exactly as a JSON parser expects; strip the quotes.
    let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    quoted.as_bytes()[1..quoted.len() - 1].to_vec()
}

impl RequestTemplate {
    pub fn new(spec: TemplateSpec<'_>) -> Self {
        let mut head = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n",
            spec.path, spec.host
        );
        for (name, value) in spec.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let mut body_start = format!("{{\"esme\":{},\"source\":\"", spec.esme).into_bytes();
        body_start.extend_from_slice(&json_string_inner(spec.source));
        body_start.extend_from_slice(b"\",\"destination\":\"");
        let texts = TextKind::ALL.map(|k| json_string_inner(&k.text()));
        Self {
            head: head.into_bytes(),
            body_start,
            destination_base: spec.destination_base,
            destinations: spec.destinations.max(1),
            texts,
            mix: spec.mix,
            txid_prefix: spec.run_id.to_owned(),
            batch: spec.batch,
        }
    }

    /// Messages carried by one request (1 for single sends).
    pub fn messages_per_request(&self) -> u64 {
        self.batch.max(1) as u64
    }

    /// Whether requests are batch submits (answers carry one result per message).
    pub fn is_batch(&self) -> bool {
        self.batch > 0
    }

    /// One send request object for global message number `m`.
    fn encode_message(&self, m: u64, scratch: &mut Vec<u8>) {
        scratch.extend_from_slice(&self.body_start);
        let mut num = itoa::Buffer::new();
        let destination = self.destination_base.wrapping_add(m % self.destinations);
        scratch.extend_from_slice(num.format(destination).as_bytes());
        scratch.extend_from_slice(b"\",\"message\":\"");
        let kind = self.mix.kind_for(m);
        let index = TextKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        scratch.extend_from_slice(&self.texts[index]);
        scratch.extend_from_slice(b"\",\"transaction_id\":\"");
        scratch.extend_from_slice(self.txid_prefix.as_bytes());
        scratch.push(b'-');
        scratch.extend_from_slice(num.format(m).as_bytes());
        scratch.extend_from_slice(b"\"}");
    }

    /// Append the request for global slot `g` to `out`. `scratch` is a reused buffer for the
    /// body. In batch mode slot `g` carries messages `g*N .. g*N+N`.
    pub fn encode(&self, g: u64, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
        scratch.clear();
        if self.batch == 0 {
            self.encode_message(g, scratch);
        } else {
            let n = self.batch as u64;
            scratch.extend_from_slice(b"{\"messages\":[");
            let first = g.saturating_mul(n);
            for m in first..first.saturating_add(n) {
                if m != first {
                    scratch.push(b',');
                }
                self.encode_message(m, scratch);
            }
            scratch.extend_from_slice(b"]}");
        }
        let mut num = itoa::Buffer::new();

        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(num.format(scratch.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(scratch);
    }
}

/// Parse `Name: value` for `--header`, refusing anything that would break the request framing.
pub fn parse_header(spec: &str) -> Result<(String, String), LoadgenError> {
    let bad = |why: &str| LoadgenError::InvalidArgument {
        what: "--header",
        why: format!("`{spec}`: {why}"),
    };
    let (name, value) = spec
        .split_once(':')
        .ok_or_else(|| bad("expected `Name: value`"))?;
    let name = name.trim();
    let value = value.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(bad("header name must be letters, digits, `-` or `_`"));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(bad("header value must not contain CR, LF or NUL"));
    }
    if name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("transfer-encoding")
    {
        return Err(bad("this header is set by the load generator"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_exact_over_each_window() {
        let mix = TextMix::parse("gsm7=70,ucs2=20,multipart=10").unwrap();
        for start in [0u64, 13, 1000] {
            let mut counts = [0; 4];
            for g in start..start + 100 {
                let k = mix.kind_for(g);
                counts[TextKind::ALL.iter().position(|x| *x == k).unwrap()] += 1;
            }
            assert_eq!(counts, [70, 20, 10, 0]);
        }
        // Interleaved, not 70 gsm7 in a row.
        let first_ten: Vec<_> = (0..10).map(|g| mix.kind_for(g)).collect();
        assert!(first_ten.contains(&TextKind::Ucs2));
        assert_eq!(
            mix.kinds(),
            vec![TextKind::Gsm7, TextKind::Ucs2, TextKind::Multipart]
        );
    }

    #[test]
    fn mix_rejects_bad_specs() {
        for bad in [
            "",
            "gsm7",
            "gsm7=x",
            "latin1=5",
            "gsm7=0",
            "gsm7=1,gsm7=2",
            "gsm7=20000",
        ] {
            assert!(TextMix::parse(bad).is_err(), "`{bad}` accepted");
        }
        assert!(TextMix::parse(" multipart-ucs2 = 3 , gsm7=0").is_ok());
    }

    #[test]
    fn texts_have_the_advertised_shape() {
        assert!(TextKind::Gsm7.text().chars().count() <= 160);
        assert!(TextKind::Ucs2.text().chars().count() <= 70);
        assert!(!TextKind::Ucs2.text().is_ascii());
        assert_eq!(TextKind::Multipart.text().chars().count(), 400);
        assert_eq!(TextKind::MultipartUcs2.text().chars().count(), 200);
    }

    fn template(headers: &[(String, String)]) -> RequestTemplate {
        RequestTemplate::new(TemplateSpec {
            host: "127.0.0.1:8080",
            path: "/api/v1/sms/send",
            headers,
            esme: 3,
            source: "Shop \"A\"",
            destination_base: 79_000_000_000,
            destinations: 10,
            mix: TextMix::parse("gsm7=1,ucs2=1").unwrap(),
            run_id: "run1",
            batch: 0,
        })
    }

    #[test]
    fn batch_request_carries_consecutive_messages() {
        let mut t = template(&[]);
        t.batch = 3;
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        t.encode(2, &mut out, &mut scratch);
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut hs);
        let httparse::Status::Complete(head_len) = req.parse(&out).unwrap() else {
            panic!("incomplete request");
        };
        let body: serde_json::Value = serde_json::from_slice(&out[head_len..]).unwrap();
        let m = body["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        let ids: Vec<&str> = m
            .iter()
            .map(|x| x["transaction_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["run1-6", "run1-7", "run1-8"]);
        assert_eq!(t.messages_per_request(), 3);
    }

    #[test]
    fn encoded_request_is_valid_http_with_exact_length_and_json() {
        let headers = vec![("Authorization".to_owned(), "Bearer x".to_owned())];
        let t = template(&headers);
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        t.encode(13, &mut out, &mut scratch);
        t.encode(14, &mut out, &mut scratch);

        let mut offset = 0;
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let mut hs = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut hs);
            let httparse::Status::Complete(head_len) = req.parse(&out[offset..]).unwrap() else {
                panic!("incomplete request");
            };
            assert_eq!(req.method, Some("POST"));
            assert_eq!(req.path, Some("/api/v1/sms/send"));
            let header = |n: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(n))
                    .map(|h| std::str::from_utf8(h.value).unwrap().to_owned())
            };
            assert_eq!(header("authorization").as_deref(), Some("Bearer x"));
            let len: usize = header("content-length").unwrap().parse().unwrap();
            let body = &out[offset + head_len..offset + head_len + len];
            bodies.push(serde_json::from_slice::<serde_json::Value>(body).unwrap());
            offset += head_len + len;
        }
        assert_eq!(offset, out.len());
        assert_eq!(bodies[0]["esme"], 3);
        assert_eq!(bodies[0]["source"], "Shop \"A\"");
        assert_eq!(bodies[0]["destination"], "79000000003");
        assert_eq!(bodies[0]["transaction_id"], "run1-13");
        assert_eq!(bodies[1]["transaction_id"], "run1-14");
        assert_ne!(bodies[0]["message"], bodies[1]["message"], "mix alternates");
    }

    #[test]
    fn header_parsing_refuses_framing_breakers() {
        assert_eq!(
            parse_header("X-App-ID: 1").unwrap(),
            ("X-App-ID".to_owned(), "1".to_owned())
        );
        assert!(parse_header("NoColon").is_err());
        assert!(parse_header("Bad Name: x").is_err());
        assert!(parse_header("X-A: a\r\nInjected: y").is_err());
        assert!(parse_header("content-length: 5").is_err());
    }
}
