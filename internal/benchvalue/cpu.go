package benchvalue

import (
	"syscall"
	"time"
)

// ProcessCPU is this process's user and system CPU time (getrusage), for
// benchmarks that report CPU per operation beside wall time.
func ProcessCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
