// Package demo holds what the example programs share: the list of checks
// each demo verifies, how it reports them, and how it prints durations.
package demo

import (
	"fmt"
	"os"
	"time"
)

// Checks collects the properties that did not hold.
type Checks []string

// Expect records the property described by format and args unless ok.
func (c *Checks) Expect(ok bool, format string, args ...any) {
	if !ok {
		*c = append(*c, fmt.Sprintf(format, args...))
	}
}

// Exit ends a demo: with status 1 if err is set (printed after name) or a
// check did not hold (each listed), else with "All checks passed."
func Exit(name string, fails Checks, err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
	if len(fails) > 0 {
		fmt.Printf("\nFAILED: %d check(s) did not hold:\n", len(fails))
		for _, f := range fails {
			fmt.Println("  -", f)
		}
		os.Exit(1)
	}
	fmt.Println("\nAll checks passed.")
}

// Dur prints d in µs below a millisecond, in ms with one decimal below a
// second, and rounded to the millisecond above.
func Dur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return d.Round(time.Millisecond).String()
}
