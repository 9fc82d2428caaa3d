package invalidation

// SetTestDrop installs the drop hook: f is asked about every decoded
// message; true drops it as if the network had lost it.
func SetTestDrop(cfg *Config, f func(partition int, seq uint64) bool) { cfg.testDrop = f }
