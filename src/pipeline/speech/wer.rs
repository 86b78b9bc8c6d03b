//! Word error rate: word-level edit distance over the reference's length, after lower-casing
//! and dropping punctuation (Whisper writes "Hello, world." for "hello world").

fn words(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>().to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Substitutions, deletions and insertions turning `reference` into `hypothesis`, per
/// reference word (0 for two empty texts; can exceed 1).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (words(reference), words(hypothesis));
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let sub = diag + usize::from(rw != hw);
            diag = row[j + 1];
            row[j + 1] = sub.min(row[j] + 1).min(diag + 1);
        }
    }
    row[h.len()] as f64 / r.len() as f64
}

#[cfg(test)]
mod tests {
    use super::wer;

    #[test]
    fn counts_edits_per_reference_word() {
        assert_eq!(wer("hello world", "Hello, world."), 0.0);
        assert_eq!(wer("the cat sat", "the cat sat down"), 1.0 / 3.0);
        assert_eq!(wer("the cat sat", "the dog sat"), 1.0 / 3.0);
        assert_eq!(wer("the cat sat", "cat sat"), 1.0 / 3.0);
        assert_eq!(wer("a b", ""), 1.0);
        assert_eq!(wer("", ""), 0.0);
    }
}
