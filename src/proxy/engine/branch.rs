//! Our Via branches: `z9hG4bK<loop hash>.<token>`, both 16 hex digits.
//!
//! The loop hash lets a request that comes back to us be recognised (RFC
//! 3261 §16.3 step 4). The token names the client transaction. Tokens are a
//! keyed hash (SipHash) of a counter, so they never repeat within a run and
//! cannot be guessed from the ones a peer has seen: a forged response must
//! name a live token, the loop hash and CSeq method of its request, and (over
//! UDP) come from the hop the request went to.

/// The RFC 3261 magic cookie that starts every compliant branch.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Makes the unpredictable tokens of our client transactions.
#[derive(Debug, Clone)]
pub struct BranchTokens {
    keys: [u64; 2],
    counter: u64,
}

impl BranchTokens {
    /// `keys` is the secret; boot draws it at random, tests fix it.
    pub fn new(keys: [u64; 2]) -> Self {
        BranchTokens { keys, counter: 0 }
    }

    /// The next token.
    pub fn next_token(&mut self) -> u64 {
        use std::hash::Hasher;
        self.counter += 1;
        // std's SipHasher is deprecated only in favour of crates that offer
        // the same function; SipHash-2-4 with a secret key is the PRF we want.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new_with_keys(self.keys[0], self.keys[1]);
        hasher.write_u64(self.counter);
        hasher.finish()
    }
}

/// Length of a client branch: cookie, 16 hex digits, `.`, 16 hex digits.
pub const CLIENT_BRANCH_LEN: usize = MAGIC_COOKIE.len() + 33;

/// Appends the branch of a client transaction.
pub fn push_client_branch(out: &mut String, loop_hash: u64, token: u64) {
    out.push_str(MAGIC_COOKIE);
    push_hex16(out, loop_hash);
    out.push('.');
    push_hex16(out, token);
}

/// The branch of a client transaction.
#[cfg(test)]
pub fn client_branch(loop_hash: u64, token: u64) -> String {
    let mut branch = String::with_capacity(CLIENT_BRANCH_LEN);
    push_client_branch(&mut branch, loop_hash, token);
    branch
}

/// Appends the branch of a statelessly relayed ACK: stable across the
/// ACK's retransmissions, and never mistaken for a client transaction (the
/// `s` is not a hex digit).
pub fn push_stateless_branch(out: &mut String, loop_hash: u64, upstream_branch: &str) {
    out.push_str(MAGIC_COOKIE);
    push_hex16(out, loop_hash);
    out.push_str(".s");
    push_hex16(out, xxhash_rust::xxh3::xxh3_64(upstream_branch.as_bytes()));
}

/// Sixteen lower-case hex digits, leading zeros kept (this runs for every
/// branch we write, so it avoids the formatting machinery).
pub(crate) fn push_hex16(out: &mut String, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 16];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = DIGITS[((value >> ((15 - i) * 4)) & 0xf) as usize];
    }
    out.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

/// The value of each byte as a hex digit, or 0x10 for a byte that is none.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0x10u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Sixteen hex digits (either case) as a number.
pub(crate) fn parse_hex16(digits: &[u8]) -> Option<u64> {
    if digits.len() != 16 {
        return None;
    }
    let mut value = 0u64;
    let mut invalid = 0u8;
    for &b in digits {
        let digit = HEX_VALUE[usize::from(b)];
        invalid |= digit;
        value = value << 4 | u64::from(digit & 0xf);
    }
    (invalid & 0x10 == 0).then_some(value)
}

/// `(loop hash, token)` of one of our client branches; None for anything
/// else, stateless ACK branches included.
pub fn parse_client_branch(branch: &str) -> Option<(u64, u64)> {
    let rest = branch.strip_prefix(MAGIC_COOKIE)?.as_bytes();
    if rest.len() != 33 || rest[16] != b'.' {
        return None;
    }
    Some((parse_hex16(&rest[..16])?, parse_hex16(&rest[17..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_branches_round_trip_and_others_do_not_parse() {
        let branch = client_branch(0xabc, 0x1234_5678_9abc_def0);
        assert_eq!(branch, "z9hG4bK0000000000000abc.123456789abcdef0");
        assert_eq!(
            parse_client_branch(&branch),
            Some((0xabc, 0x1234_5678_9abc_def0))
        );
        let mut stateless = String::new();
        push_stateless_branch(&mut stateless, 1, "z9hG4bK-up");
        for other in [
            stateless,
            "z9hG4bK0000000000000000.3".to_string(),
            "z9hG4bK-sipp-1".to_string(),
            "z9hG4bK".to_string(),
            "garbage".to_string(),
            "z9hG4bK000000000000000g.0000000000000001".to_string(),
        ] {
            assert_eq!(parse_client_branch(&other), None, "{other}");
        }
    }

    #[test]
    fn tokens_do_not_repeat_and_depend_on_the_secret() {
        let mut a = BranchTokens::new([1, 2]);
        let mut b = BranchTokens::new([1, 3]);
        let from_a: Vec<u64> = (0..1000).map(|_| a.next_token()).collect();
        let from_b: Vec<u64> = (0..1000).map(|_| b.next_token()).collect();
        let mut unique = from_a.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 1000);
        assert!(from_a.iter().zip(&from_b).all(|(x, y)| x != y));
        // Not a counter: consecutive tokens differ in about half their bits.
        let flips: u32 = from_a.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
        let mean = f64::from(flips) / 999.0;
        assert!((24.0..40.0).contains(&mean), "mean bit flips {mean}");
    }
}
