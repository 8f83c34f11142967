package demo

import (
	"reflect"
	"testing"
)

// TestPlanIsSeeded: a DC's workload is a function of the seed (and DCs,
// writes, keys): the same seed gives the same steps and workload digest,
// another seed another workload, and each DC its own.
func TestPlanIsSeeded(t *testing.T) {
	o := Options{DCs: 3, Writes: 200, Keys: 10, Seed: 1}
	if a, b := Plan(o, 0), Plan(o, 0); !reflect.DeepEqual(a, b) {
		t.Fatal("two plans of seed 1 differ")
	}
	if reflect.DeepEqual(Plan(o, 0), Plan(o, 1)) {
		t.Error("dc1 and dc2 have the same plan")
	}
	w1 := Workload(o)
	if w1 != Workload(o) {
		t.Error("the workload digest of seed 1 changes")
	}
	o2 := o
	o2.Seed = 2
	if Workload(o2) == w1 {
		t.Error("seeds 1 and 2 give the same workload")
	}
	steps := Plan(o, 2)
	orders, ctx, dels := 0, 0, 0
	for _, s := range steps {
		if s.OrderLines > 0 {
			orders++
		}
		if s.WithContext {
			ctx++
		}
		if s.Delete {
			dels++
		}
	}
	if len(steps) != 200 || orders != 20 || ctx == 0 || ctx == 200 || dels == 0 {
		t.Errorf("plan of 200 writes: %d steps, %d orders, %d with context, %d deletes", len(steps), orders, ctx, dels)
	}
}
