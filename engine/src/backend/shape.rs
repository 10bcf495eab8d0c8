//! Per-sample tensor shapes as far as a model tells them. An ONNX file states every size; a TorchScript file
//! states none, so its shapes are what a declaration gives (`-1` for a size left to the requests) or, without one,
//! unknown down to the rank. Requests then bring their own shape, which must fit what is known.

use std::fmt;

/// A per-sample shape (no batch dimension): every size known, some sizes left to the requests, or nothing known,
/// not even the rank. KServe v2's metadata shows an unknown size as -1, Triton's convention.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Shape(Option<Vec<Option<usize>>>);

impl Shape {
    /// A shape whose every size is known.
    #[must_use]
    pub fn fixed(dims: impl Into<Vec<usize>>) -> Self {
        Self(Some(dims.into().into_iter().map(Some).collect()))
    }

    /// A shape of known rank; `None` marks a size the requests give.
    #[must_use]
    pub fn partial(dims: Vec<Option<usize>>) -> Self {
        Self(Some(dims))
    }

    /// A shape of which nothing is known, not even the rank.
    #[must_use]
    pub fn unknown() -> Self {
        Self(None)
    }

    /// Its dimensions (`None` where the size is unknown), or `None` when the rank is unknown.
    #[must_use]
    pub fn dims(&self) -> Option<&[Option<usize>]> {
        self.0.as_deref()
    }

    /// Whether every size is known.
    #[must_use]
    pub fn is_fixed(&self) -> bool {
        self.0.as_ref().is_some_and(|dims| dims.iter().all(Option::is_some))
    }

    /// The sizes, when every one is known.
    #[must_use]
    pub fn to_fixed(&self) -> Option<Vec<usize>> {
        self.0.as_ref()?.iter().copied().collect()
    }

    /// Values in one sample of this shape, when every size is known.
    #[must_use]
    pub fn elements(&self) -> Option<usize> {
        self.0.as_ref()?.iter().try_fold(1_usize, |n, d| n.checked_mul((*d)?))
    }

    /// Whether a sample of shape `sample` fits: the same rank when it is known, the same size wherever one is.
    #[must_use]
    pub fn admits(&self, sample: &[usize]) -> bool {
        self.0.as_ref().is_none_or(|dims| {
            dims.len() == sample.len() && dims.iter().zip(sample).all(|(want, got)| want.is_none_or(|w| w == *got))
        })
    }

    /// The dimensions as KServe v2 writes them, -1 for an unknown size; `None` when the rank is unknown.
    #[must_use]
    pub fn signed(&self) -> Option<Vec<i64>> {
        let signed = |d: &Option<usize>| d.map_or(-1, |d| i64::try_from(d).unwrap_or(i64::MAX));
        Some(self.0.as_ref()?.iter().map(signed).collect())
    }
}

/// A shape equals a list of sizes when every size is known and the same.
impl PartialEq<[usize]> for Shape {
    fn eq(&self, other: &[usize]) -> bool {
        self.0
            .as_ref()
            .is_some_and(|dims| dims.len() == other.len() && dims.iter().zip(other).all(|(d, o)| *d == Some(*o)))
    }
}

impl PartialEq<Vec<usize>> for Shape {
    fn eq(&self, other: &Vec<usize>) -> bool {
        *self == other[..]
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Self::fixed(dims)
    }
}

/// `[30, 21, 3]`, `[-1, 21, 3]` with an unknown size, `[...]` when the rank is unknown.
impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.signed() {
            Some(dims) => write!(f, "{dims:?}"),
            None => f.write_str("[...]"),
        }
    }
}

/// Values in a sample of shape `dims`, or `None` when the count overflows.
#[must_use]
pub fn elements_of(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1_usize, |n, &d| n.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_shape_admits_itself_only() {
        let shape = Shape::fixed([30, 21, 3]);
        assert!(shape.is_fixed() && shape.admits(&[30, 21, 3]));
        assert!(!shape.admits(&[29, 21, 3]) && !shape.admits(&[30, 21]) && !shape.admits(&[30, 21, 3, 1]));
        assert_eq!((shape.elements(), shape.to_fixed()), (Some(1890), Some(vec![30, 21, 3])));
        assert_eq!(shape.to_string(), "[30, 21, 3]");
        assert!(shape == vec![30, 21, 3] && shape != vec![30, 21] && shape != vec![30, 21, 4]);
        assert!(Shape::partial(vec![None, Some(21), Some(3)]) != vec![30, 21, 3]);
    }

    #[test]
    fn unknown_sizes_are_left_to_the_sample() {
        let frames_unknown = Shape::partial(vec![None, Some(21), Some(3)]);
        assert!(frames_unknown.admits(&[7, 21, 3]) && frames_unknown.admits(&[300, 21, 3]));
        assert!(!frames_unknown.admits(&[7, 20, 3]) && !frames_unknown.admits(&[7, 21]));
        assert_eq!((frames_unknown.is_fixed(), frames_unknown.elements()), (false, None));
        assert_eq!(frames_unknown.signed(), Some(vec![-1, 21, 3]));
        assert_eq!(frames_unknown.to_string(), "[-1, 21, 3]");

        let unknown = Shape::unknown();
        assert!(unknown.admits(&[]) && unknown.admits(&[5]) && unknown.admits(&[1, 2, 3, 4]));
        assert_eq!((unknown.dims(), unknown.signed(), unknown.elements()), (None, None, None));
        assert_eq!(unknown.to_string(), "[...]");
    }

    #[test]
    fn element_counts_never_overflow() {
        assert_eq!(Shape::fixed([usize::MAX, 2]).elements(), None);
        assert_eq!(elements_of(&[usize::MAX, 2]), None);
        assert_eq!(elements_of(&[4, 5]), Some(20));
        assert_eq!(Shape::fixed(Vec::new()).elements(), Some(1), "a scalar sample holds one value");
    }
}
