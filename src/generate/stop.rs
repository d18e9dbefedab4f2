//! Stop strings over streamed text.

/// The result of feeding text to a [`StopMatcher`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutcome {
    /// Text that is now safe to emit: it cannot be part of a stop string.
    pub emit: String,
    /// Index (into the stop list) of the stop string that completed, if any. Nothing after its start is emitted.
    pub stopped: Option<usize>,
}

/// Finds stop strings in text that arrives in pieces, holding back any tail that could still become one.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<(usize, String)>,
    held: String,
    done: bool,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().enumerate().filter(|(_, s)| !s.is_empty()).map(|(i, s)| (i, s.clone())).collect(), held: String::new(), done: false }
    }

    /// Feeds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.done {
            return StopOutcome::default();
        }
        self.held.push_str(text);
        // Earliest complete stop string (ties: the one listed first).
        let hit = self.stops.iter().filter_map(|(i, s)| self.held.find(s.as_str()).map(|pos| (pos, *i))).min();
        if let Some((pos, i)) = hit {
            let emit = self.held[..pos].to_string();
            self.held.clear();
            self.done = true;
            return StopOutcome { emit, stopped: Some(i) };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let keep_from = self
            .held
            .char_indices()
            .map(|(b, _)| b)
            .find(|&b| {
                let tail = &self.held[b..];
                self.stops.iter().any(|(_, s)| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let emit = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopOutcome { emit, stopped: None }
    }

    /// Ends the stream: releases held-back text (empty after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let r = m.push(p);
            out.push_str(&r.emit);
            if r.stopped.is_some() {
                return (out, r.stopped);
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn stop_split_across_pieces() {
        assert_eq!(feed(&["\nObservation:"], &["Act", "ion: go\nObs", "erva", "tion: x"]), ("Action: go".into(), Some(0)));
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(feed(&["STOP"], &["a ST", "OP", "x"]), ("a ".into(), Some(0)));
        assert_eq!(feed(&["STOP"], &["a ST", "ART"]), ("a START".into(), None));
        assert_eq!(feed(&["STOP"], &["end ST"]), ("end ST".into(), None));
    }

    #[test]
    fn earliest_stop_wins_and_empty_ignored() {
        assert_eq!(feed(&["", "bc", "abcd"], &["xabcd"]), ("x".into(), Some(2)));
        assert_eq!(feed(&["", "bc", "abcd"], &["xabce"]), ("xa".into(), Some(1)));
        assert_eq!(feed(&["ab", "b"], &["xab"]), ("x".into(), Some(0)));
    }

    #[test]
    fn multibyte_boundaries() {
        assert_eq!(feed(&["東京"], &["naïve 東", "京 x"]), ("naïve ".into(), Some(0)));
        assert_eq!(feed(&["🙂!"], &["a🙂", "b"]), ("a🙂b".into(), None));
    }

    #[test]
    fn random_splits_property() {
        let text = "Thought: I need the key.\nAction: take key from drawer 1\nObservation: You take it. 東京🙂 done";
        let stops = ["\nObservation:", "zzz", "drawer 2"];
        let want_cut = text.find("\nObservation:").unwrap();
        let mut seed = 12345u64;
        for _ in 0..500 {
            let mut pieces = vec![];
            let mut start = 0;
            let bounds: Vec<usize> = text.char_indices().map(|(b, _)| b).chain([text.len()]).collect();
            while start < text.len() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let step = 1 + (seed >> 33) as usize % 6;
                let idx = bounds.iter().position(|&b| b == start).unwrap();
                let end = bounds[(idx + step).min(bounds.len() - 1)];
                pieces.push(&text[start..end]);
                start = end;
            }
            assert_eq!(feed(&stops, &pieces), (text[..want_cut].to_string(), Some(0)));
        }
    }
}
