// Package benchvalue is the value type every benchmark stores (the
// library's own and the peer comparison in bench/), so that all of them move
// the same ~200 bytes of JSON, and ProcessCPU, which their CPU-per-operation
// figures read.
package benchvalue

import "strconv"

// Value is a user record of about 200 bytes as JSON.
type Value struct {
	ID      int64    `json:"id"`
	Name    string   `json:"name"`
	Email   string   `json:"email"`
	Country string   `json:"country"`
	Tags    []string `json:"tags"`
	Score   float64  `json:"score"`
	Active  bool     `json:"active"`
	Created int64    `json:"created"`
}

// New returns the i-th value.
func New(i int) Value {
	return Value{
		ID:      int64(i),
		Name:    "user number " + strconv.Itoa(i),
		Email:   "user" + strconv.Itoa(i) + "@example.com",
		Country: "NL",
		Tags:    []string{"alpha", "beta", "gamma", "delta"},
		Score:   float64(i) * 1.5,
		Active:  i%2 == 0,
		Created: 1_700_000_000 + int64(i),
	}
}
