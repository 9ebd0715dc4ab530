//! The page's state as plain structs with methods. Components only wire these to signals, so
//! everything here is tested without a browser.

use crate::protocol::{ChatMessage, GenStats, Role};

/// A conversation: settled turns plus the answer being streamed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conversation {
    /// The system prompt; empty uses the template's default.
    pub system: String,
    /// Settled turns, alternating user and assistant.
    pub turns: Vec<ChatMessage>,
    /// The answer arriving now, if any.
    pub pending: Option<Pending>,
}

/// An answer being streamed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pending {
    /// The request's id.
    pub id: u32,
    /// Text so far.
    pub text: String,
    /// Arrival time of each token, in ms since the request.
    pub arrivals: Vec<f64>,
}

/// Why [`Conversation::ask`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AskError {
    /// Nothing to send.
    Empty,
    /// An answer is still streaming.
    Busy,
}

impl Conversation {
    /// Adds the user's message and starts an answer with `id`; returns the messages to send.
    pub fn ask(&mut self, text: &str, id: u32) -> Result<Vec<ChatMessage>, AskError> {
        if self.pending.is_some() {
            return Err(AskError::Busy);
        }
        if text.trim().is_empty() {
            return Err(AskError::Empty);
        }
        self.turns.push(ChatMessage {
            role: Role::User,
            content: text.to_string(),
        });
        self.pending = Some(Pending {
            id,
            ..Pending::default()
        });
        Ok(self.messages())
    }

    /// The messages the template renders: the system prompt (when set) and every settled turn.
    pub fn messages(&self) -> Vec<ChatMessage> {
        let system = (!self.system.trim().is_empty()).then(|| ChatMessage {
            role: Role::System,
            content: self.system.clone(),
        });
        system
            .into_iter()
            .chain(self.turns.iter().cloned())
            .collect()
    }

    /// A token of answer `id` arrived; tokens of another answer are ignored.
    pub fn token(&mut self, id: u32, text: &str, at_ms: f64) {
        if let Some(p) = self.pending.as_mut().filter(|p| p.id == id) {
            p.text.push_str(text);
            p.arrivals.push(at_ms);
        }
    }

    /// Answer `id` ended: it becomes an assistant turn (an empty answer leaves none).
    pub fn finish(&mut self, id: u32) {
        if self.pending.as_ref().is_some_and(|p| p.id == id)
            && let Some(p) = self.pending.take()
            && !p.text.is_empty()
        {
            self.turns.push(ChatMessage {
                role: Role::Assistant,
                content: p.text,
            });
        }
    }

    /// Answer `id` failed: the question stays, so it can be asked again after a fix.
    pub fn fail(&mut self, id: u32) {
        if self.pending.as_ref().is_some_and(|p| p.id == id) {
            self.pending = None;
            if self.turns.last().is_some_and(|t| t.role == Role::User) {
                self.turns.pop();
            }
        }
    }

    /// Forgets every turn (the system prompt stays).
    pub fn clear(&mut self) {
        self.turns.clear();
        self.pending = None;
    }

    /// Whether an answer is streaming.
    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }
}

/// Decode speed over a sliding window of token arrivals, one value per token after the first:
/// what the sparkline draws.
pub fn rates(arrivals: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(1);
    (1..arrivals.len())
        .map(|i| {
            let from = i.saturating_sub(window);
            let dt = arrivals[i] - arrivals[from];
            if dt > 0.0 {
                (i - from) as f64 * 1000.0 / dt
            } else {
                0.0
            }
        })
        .collect()
}

/// An SVG polyline's `points` for `values` in a `width`×`height` box, scaled to the maximum.
pub fn sparkline(values: &[f64], width: f64, height: f64) -> String {
    let max = values.iter().copied().fold(0.0f64, f64::max);
    if values.is_empty() || max <= 0.0 {
        return String::new();
    }
    let step = if values.len() > 1 {
        width / (values.len() - 1) as f64
    } else {
        0.0
    };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                height - v / max * (height - 2.0) - 1.0
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The readout under the chat.
pub fn stats_line(stats: &GenStats) -> String {
    let cached = if stats.cached_tokens > 0 {
        format!(" ({} reused)", stats.cached_tokens)
    } else {
        String::new()
    };
    format!(
        "prefill {} tokens{cached} at {:.1} tok/s · decode {} tokens at {:.1} tok/s · first token {:.0} ms",
        stats.prompt_tokens,
        stats.prefill_tok_s,
        stats.generated,
        stats.decode_tok_s,
        stats.ttft_ms
    )
}

/// A piece of an answer: prose, or a fenced code block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Text outside fences.
    Text(String),
    /// A fenced block; `open` while its closing fence has not arrived yet.
    Code {
        /// The info string after the opening fence (`python`), possibly empty.
        lang: String,
        /// The block's text.
        body: String,
        /// Still streaming.
        open: bool,
    },
}

/// Splits markdown text at ``` fences.
pub fn segments(text: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut prose = String::new();
    let mut code: Option<(String, String)> = None;
    for line in text.split_inclusive('\n') {
        let fence = line.trim_start().starts_with("```");
        match (&mut code, fence) {
            (None, true) => {
                if !prose.is_empty() {
                    out.push(Segment::Text(core::mem::take(&mut prose)));
                }
                let lang = line.trim_start()[3..].trim().to_string();
                code = Some((lang, String::new()));
            }
            (None, false) => prose.push_str(line),
            (Some(_), true) => {
                if let Some((lang, body)) = code.take() {
                    out.push(Segment::Code {
                        lang,
                        body: body.strip_suffix('\n').unwrap_or(&body).to_string(),
                        open: false,
                    });
                }
            }
            (Some((_, body)), false) => body.push_str(line),
        }
    }
    if let Some((lang, body)) = code {
        out.push(Segment::Code {
            lang,
            body,
            open: true,
        });
    } else if !prose.is_empty() {
        out.push(Segment::Text(prose));
    }
    out
}

/// Bytes for people: `491.4 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A setting as people write it: `0.95`, not the f32's `0.949999988079071`.
pub fn trim_number(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Progress as a fraction in [0, 1], or `None` when the total is unknown.
pub fn fraction(done: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| (done as f64 / total as f64).clamp(0.0, 1.0))
}

/// The cache key of a dropped file: its size and name.
pub fn cache_key_for_file(name: &str, size: u64) -> String {
    format!("file-{size}-{}", sanitize(name))
}

/// The cache key of a URL: a hash of it and its last path segment.
pub fn cache_key_for_url(url: &str) -> String {
    // FNV-1a: stable across sessions and builds.
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("url-{hash:016x}-{}", sanitize(url_file_name(url)))
}

/// The file name a URL ends with (its last path segment, without query or fragment); empty when
/// the path ends with a slash.
pub fn url_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("m{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_alternates_and_keeps_the_system_prompt_first() {
        let mut c = Conversation {
            system: "be brief".into(),
            ..Conversation::default()
        };
        let sent = c.ask("hi", 1).unwrap();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].role, Role::System);
        assert_eq!(c.ask("again", 2), Err(AskError::Busy));
        c.token(1, "hel", 10.0);
        c.token(9, "stray", 11.0);
        c.token(1, "lo", 20.0);
        assert!(c.busy());
        c.finish(1);
        assert!(!c.busy());
        assert_eq!(c.turns[1].content, "hello");
        let sent = c.ask("more", 2).unwrap();
        let roles: Vec<Role> = sent.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::User]
        );
        assert_eq!(c.ask("  ", 3), Err(AskError::Busy));
        c.fail(2);
        assert_eq!(c.turns.len(), 2);
        assert_eq!(c.ask(" \n", 3), Err(AskError::Empty));
        c.clear();
        assert!(c.turns.is_empty());
        assert_eq!(c.system, "be brief");
    }

    #[test]
    fn an_empty_answer_leaves_no_turn() {
        let mut c = Conversation::default();
        c.ask("hi", 1).unwrap();
        c.finish(1);
        assert_eq!(c.turns.len(), 1);
        assert!(c.messages().iter().all(|m| m.role == Role::User));
    }

    #[test]
    fn rates_slide_over_the_window() {
        assert!(rates(&[], 4).is_empty());
        assert!(rates(&[5.0], 4).is_empty());
        let r = rates(&[0.0, 100.0, 200.0, 300.0], 2);
        assert_eq!(r, vec![10.0, 10.0, 10.0]);
        assert_eq!(rates(&[0.0, 0.0], 1), vec![0.0]);
    }

    #[test]
    fn sparklines_fit_their_box() {
        assert_eq!(sparkline(&[], 100.0, 20.0), "");
        assert_eq!(sparkline(&[0.0, 0.0], 100.0, 20.0), "");
        assert_eq!(sparkline(&[1.0, 2.0], 100.0, 20.0), "0.0,10.0 100.0,1.0");
    }

    #[test]
    fn fences_split_code_from_prose_even_mid_stream() {
        let text = "Here:\n```python\ndef f():\n    return 1\n```\nDone.";
        assert_eq!(
            segments(text),
            vec![
                Segment::Text("Here:\n".into()),
                Segment::Code {
                    lang: "python".into(),
                    body: "def f():\n    return 1".into(),
                    open: false
                },
                Segment::Text("Done.".into()),
            ]
        );
        assert_eq!(
            segments("```\nx = 1"),
            vec![Segment::Code {
                lang: String::new(),
                body: "x = 1".into(),
                open: true
            }]
        );
        assert!(segments("").is_empty());
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(491_400_064), "491.4 MB");
        assert_eq!(fraction(5, 0), None);
        assert_eq!(fraction(5, 10), Some(0.5));
        assert_eq!(fraction(50, 10), Some(1.0));
    }

    #[test]
    fn settings_read_as_written() {
        assert_eq!(trim_number(f64::from(0.95f32)), "0.95");
        assert_eq!(trim_number(0.0), "0");
        assert_eq!(trim_number(1500.0), "1500");
        assert_eq!(trim_number(42.0), "42");
        assert_eq!(trim_number(0.8), "0.8");
    }

    #[test]
    fn cache_keys_are_safe_file_names() {
        assert_eq!(cache_key_for_file("a b/c.gguf", 9), "file-9-a_b_c.gguf");
        let k = cache_key_for_url("https://h/x/model.gguf?download=1");
        assert!(k.starts_with("url-") && k.ends_with("-model.gguf"), "{k}");
        assert_ne!(k, cache_key_for_url("https://h/y/model.gguf"));
        assert_eq!(sanitize(".."), "m..");
        assert_eq!(url_file_name("https://h/x/m.gguf?download=1#a"), "m.gguf");
        assert_eq!(url_file_name("https://h/x/"), "");
    }
}
