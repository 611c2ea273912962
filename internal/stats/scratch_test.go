package stats

import (
	"os"
	"testing"

	"github.com/prometheus/common/expfmt"
)

func TestScratch(t *testing.T) {
	col := NewCollector(RoleInitiator, "transport")
	c := NewCounters()
	c.Done(OpRead, 4096, c.Start(OpRead), ErrNone)
	col.Add("rbdi0", Labels{Device: "rbdi0", Target: "10.0.0.1:4420", Export: "disk0"}, c)
	col.AddInfo("rbdi0", Labels{Device: "rbdi0", Target: "10.0.0.1:4420", Export: "disk0"}, 1<<30, map[string]string{"transport": "rxe"})
	reg := NewRegistry(col)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName()[:4] == "rbd_" {
			expfmt.MetricFamilyToText(os.Stdout, mf)
		}
	}
	c.Snapshot().WriteText(os.Stdout)
}
