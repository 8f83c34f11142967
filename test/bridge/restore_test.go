package bridge_test

import (
	"fmt"
	"testing"
	"time"
)

// TestRestoreRecoversOwnWrites: a DC restored from an old backup takes
// back, from its own stream, the writes it made after the backup (they are
// at the other DCs too, and loop prevention never sends them back), so the
// DCs converge (docs/DESIGN.md, invariant 10) without anyone rewriting
// those keys.
func TestRestoreRecoversOwnWrites(t *testing.T) {
	c := newCluster(t, "mesh", 2, nil).start()
	c.write("dc1", "a", "before-backup", false)
	c.waitConverged(10 * time.Second)
	backup := c.backup("dc1")
	for i := range 5 {
		c.write("dc1", fmt.Sprintf("b%d", i), "after-backup", false)
	}
	c.waitConverged(10 * time.Second)
	c.stop("dc1")
	c.SetDataDir("dc1", backup)
	c.openStore("dc1")
	c.startRep("dc1")
	c.waitConverged(3 * time.Second)
}
