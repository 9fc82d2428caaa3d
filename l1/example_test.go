package l1_test

import (
	"fmt"
	"time"

	"github.com/nearcache/nearcache/l1"
)

// The fill guard: a load that reserved its ticket before an invalidation
// cannot store the value it read.
func ExampleCache_Reserve() {
	c, err := l1.New[string](l1.Config{MaxEntries: 1000}, nil)
	if err != nil {
		panic(err)
	}
	defer c.Close()

	t := c.Reserve("user:1") // a loader starts: ticket first, then the source
	old := "alice@old"       // ... it reads the old value
	c.Invalidate("user:1")   // meanwhile a writer updates the source and invalidates
	fmt.Println("late fill stored:", c.Fill(t, old, time.Minute))

	t = c.Reserve("user:1") // the next loader reads the new value
	c.Fill(t, "alice@new", time.Minute)
	c.Wait() // ristretto applies sets asynchronously
	v, ok := c.Get("user:1")
	fmt.Println(v, ok)
	fmt.Println("refused:", c.Stats().FillsRefused)
	// Output:
	// late fill stored: false
	// alice@new true
	// refused: 1
}
