package schema

import (
	"cmp"
	"strconv"
	"strings"
)

// JoinKey appends a field name or map key to a path: .key, or ["key"] when
// key is not identifier-safe. Every field path Flotilla reports uses it.
func JoinKey(path, key string) string {
	if !isIdentifier(key) {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// JoinIndex appends a list index to a path: [i].
func JoinIndex(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

func isIdentifier(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '_', 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z':
		case '0' <= ch && ch <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// ComparePaths orders field paths as a reader expects: runs of digits
// compare by value, so http[2] sorts before http[10].
func ComparePaths(a, b string) int {
	for a != "" && b != "" {
		na, nb := digits(a), digits(b)
		if na > 0 && nb > 0 {
			x, y := strings.TrimLeft(a[:na], "0"), strings.TrimLeft(b[:nb], "0")
			if n := cmp.Or(cmp.Compare(len(x), len(y)), strings.Compare(x, y)); n != 0 {
				return n
			}
			a, b = a[na:], b[nb:]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

// candidate is a name that an unknown name may be a misspelling of, and the
// name to suggest for it.
type candidate struct {
	match, suggest string
}

// suggest returns the candidate closest to name, ignoring case, within an
// edit distance of 2 and shorter than name itself, so "x" suggests nothing.
// When two different names are equally close it suggests neither.
func suggest(name string, candidates []candidate) (string, bool) {
	const maxDistance = 2
	lower := strings.ToLower(name)
	best, bestDist, tied := "", maxDistance+1, false
	for _, c := range candidates {
		switch d := editDistance(lower, strings.ToLower(c.match), maxDistance); {
		case d < bestDist:
			best, bestDist, tied = c.suggest, d, false
		case d == bestDist && c.suggest != best:
			tied = true
		}
	}
	if tied || bestDist > maxDistance || bestDist >= len(name) {
		return "", false
	}
	return best, true
}

// editDistance is the Levenshtein distance between a and b in bytes, or
// limit+1 when it is more than limit.
func editDistance(a, b string, limit int) int {
	if d := len(a) - len(b); d > limit || -d > limit {
		return limit + 1
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		rowMin := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			rowMin = min(rowMin, cur[j])
		}
		if rowMin > limit {
			return limit + 1
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], limit+1)
}

// Closest returns the option nearest to name (case-insensitive, at most two
// edits away, no tie), for "did you mean" hints outside proto schemas.
func Closest(name string, options []string) (string, bool) {
	cs := make([]candidate, len(options))
	for i, o := range options {
		cs[i] = candidate{match: o, suggest: o}
	}
	return suggest(name, cs)
}
