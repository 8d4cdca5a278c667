//! Stop-sequence matching over streamed text, across token boundaries.
//!
//! Text that could still be the start of a stop string is held back until it either completes
//! the stop string (then it is dropped and generation ends) or stops matching (then it is
//! released), so a client never sees part of a stop string.

/// Tracks generated text and releases what is safe to show.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops,
            ..Default::default()
        }
    }

    /// Add a piece of decoded text; returns the text that may be shown now and whether a stop
    /// string was completed.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        let search_from = self.emitted;
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|p| search_from + p)
            })
            .min();
        if let Some(end) = hit {
            let out = self.text[self.emitted..end].to_string();
            self.text.truncate(end);
            self.emitted = end;
            self.stopped = true;
            return (out, true);
        }
        let safe = self.text.len() - self.held_back();
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, false)
    }

    /// Release whatever is still held back (generation ended for another reason).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// Whether a stop string was completed.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The text shown so far plus anything released by `finish`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Length of the longest suffix of the unreleased text that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        let tail = &self.text[self.emitted..];
        let mut best = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > best && tail.ends_with(&s[..i]) {
                    best = i;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_split_across_pieces_is_never_shown() {
        let mut m = StopMatcher::new(vec!["<END>".into()]);
        let mut shown = String::new();
        let mut stopped = false;
        for piece in ["Hello <", "E", "N", "D> world"] {
            let (out, s) = m.push(piece);
            shown.push_str(&out);
            stopped = s;
            if s {
                break;
            }
        }
        assert!(stopped);
        assert_eq!(shown, "Hello ");
        assert_eq!(m.text(), "Hello ");
    }

    #[test]
    fn partial_match_is_released_when_it_breaks() {
        let mut m = StopMatcher::new(vec!["abc".into()]);
        assert_eq!(m.push("xa"), ("x".to_string(), false));
        assert_eq!(m.push("bd"), ("abd".to_string(), false));
        assert_eq!(m.push("a"), (String::new(), false));
        assert_eq!(m.finish(), "a");
    }

    #[test]
    fn multibyte_stop_strings_hold_back_on_char_boundaries() {
        let mut m = StopMatcher::new(vec!["日本語".into()]);
        assert_eq!(m.push("x日本"), ("x".to_string(), false));
        assert_eq!(m.push("語y"), (String::new(), true));
    }
}
