//! Choosing the response to send upstream when every branch has answered
//! (RFC 3261 §16.7 step 6).

/// Whether final response `candidate` beats `best`: a 6xx beats everything
/// (it ends the search), then the lowest class wins; within a class the first
/// one received stays.
pub fn better_response(best: Option<u16>, candidate: u16) -> bool {
    let Some(best) = best else {
        return true;
    };
    let rank = |code: u16| match code / 100 {
        2 => 0,
        6 => 1,
        class => class + 1,
    };
    rank(candidate) < rank(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_class_wins_and_6xx_beats_4xx() {
        assert!(better_response(None, 503));
        assert!(better_response(Some(503), 486));
        assert!(!better_response(Some(486), 503));
        assert!(!better_response(Some(486), 404), "first of a class stays");
        assert!(better_response(Some(486), 603));
        assert!(better_response(Some(603), 200));
        assert!(better_response(Some(486), 302));
    }
}
