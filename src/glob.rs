//! `*` patterns over session IDs, shared by token scopes (`auth::token`) and forward
//! rules (`relay::push`).

/// Whether `text` matches `pattern`, where `*` matches any run of bytes (`/` included)
/// and every other byte itself. Linear backtracking to the last `*` (no recursion, so no
/// pattern can make it exponential): a later `*` can match anything an earlier one could.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more byte and try again from there.
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}
