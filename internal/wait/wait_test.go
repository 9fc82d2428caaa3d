package wait

import (
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWithin(t *testing.T) {
	var idle sync.WaitGroup
	if !Within(&idle, time.Hour) {
		t.Fatal("Within on a zero WaitGroup = false, want true at once")
	}

	var stuck sync.WaitGroup
	stuck.Add(1)
	if Within(&stuck, time.Millisecond) {
		t.Fatal("Within with work running = true, want false after the bound")
	}
	stuck.Done() // ends the goroutine Within left waiting (goleak checks it)

	var ends sync.WaitGroup
	ends.Add(1)
	release := make(chan struct{})
	go func() {
		<-release
		ends.Done()
	}()
	close(release)
	if !Within(&ends, time.Hour) {
		t.Fatal("Within = false, want true once the work ends")
	}
}
