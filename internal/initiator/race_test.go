//go:build race

package initiator_test

// raceEnabled: the race detector makes sync.Pool drop what is put back,
// so allocation counts mean nothing under -race.
const raceEnabled = true
