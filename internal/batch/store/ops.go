package store

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/riffle-dev/riffle/internal/batch/job"
)

// Verbs of the operations Batch returns, as in OperationMetadata.verb.
const (
	VerbCancel = "cancel"
	VerbDelete = "delete"
)

// BeginStop starts cancelling (verb "cancel") or deleting (verb "delete")
// a job: the job moves to CANCELLATION_IN_PROGRESS or DELETION_IN_PROGRESS
// and a pending long-running operation is recorded and returned. Whoever
// stops the job's tasks then calls FinishStop (or, for a cancel,
// SetJobState CANCELLED), which completes the operation.
//
// Cancelling a final job is ErrFailedPrecondition; deleting one goes
// straight to DELETION_IN_PROGRESS. Stopping a job that is already being
// stopped the same way returns a new operation that completes with the
// first. With requestID, a retry returns the same operation.
func (s *Store) BeginStop(ctx context.Context, jobName, verb, requestID string) (*longrunningpb.Operation, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var to batchpb.JobStatus_State
	switch verb {
	case VerbCancel:
		to = batchpb.JobStatus_CANCELLATION_IN_PROGRESS
	case VerbDelete:
		to = batchpb.JobStatus_DELETION_IN_PROGRESS
	default:
		return nil, fmt.Errorf("%w: unknown verb %q", ErrInvalidArgument, verb)
	}
	project, location, _, ok := job.SplitName(jobName)
	if !ok {
		return nil, fmt.Errorf("%w: %q is not a job name (projects/P/locations/L/jobs/J)", ErrInvalidArgument, jobName)
	}
	var op *longrunningpb.Operation
	err := s.db.Update(func(tx *bolt.Tx) error {
		if requestID != "" {
			if prev := tx.Bucket(bRequests).Get(requestKey(verb, jobName, requestID)); prev != nil {
				if o, ok, err := get(tx.Bucket(bOps), prev, new(longrunningpb.Operation)); err != nil {
					return err
				} else if ok {
					op = o
					return nil
				}
			}
		}
		j, err := s.getJob(tx, jobName)
		if err != nil {
			return err
		}
		now := s.now()
		st := j.GetStatus().GetState()
		switch {
		case st == to:
			// Already on its way: the new operation completes with it.
		case verb == VerbCancel && terminal(st):
			return fmt.Errorf("%w: job %s is already %s; only active jobs can be cancelled", ErrFailedPrecondition, jobName, st)
		case verb == VerbCancel && st == batchpb.JobStatus_DELETION_IN_PROGRESS:
			return fmt.Errorf("%w: job %s is being deleted", ErrFailedPrecondition, jobName)
		default:
			if err := s.setJobState(tx, j, to, "", now); err != nil {
				return err
			}
			if err := put(tx.Bucket(bJobs), []byte(jobName), j); err != nil {
				return err
			}
		}
		name := fmt.Sprintf("projects/%s/locations/%s/operations/operation-%d-%s", project, location, now.UnixMilli(), job.NewUUID())
		md, err := anypb.New(&batchpb.OperationMetadata{
			CreateTime: timestamppb.New(now), Target: jobName, Verb: verb, ApiVersion: "v1",
			RequestedCancellation: verb == VerbCancel,
		})
		if err != nil {
			return err
		}
		op = &longrunningpb.Operation{Name: name, Metadata: md}
		if err := put(tx.Bucket(bOps), []byte(name), op); err != nil {
			return err
		}
		if err := tx.Bucket(bJobOps).Put([]byte(jobName+"\x00"+name), nil); err != nil {
			return err
		}
		if requestID != "" {
			return tx.Bucket(bRequests).Put(requestKey(verb, jobName, requestID), []byte(name))
		}
		return nil
	})
	return op, err
}

// FinishStop completes what BeginStop started, once the job's tasks are
// stopped: a CANCELLATION_IN_PROGRESS job becomes CANCELLED (tasks that
// never ran UNEXECUTED, running ones FAILED), a DELETION_IN_PROGRESS job
// is removed with its tasks; either way its pending operations are
// marked done. For jobs in other states it only completes stale pending
// operations. A job that no longer exists is not an error.
func (s *Store) FinishStop(ctx context.Context, jobName string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		now := s.now()
		j, err := s.getJob(tx, jobName)
		if err != nil {
			return s.finishOps(tx, jobName, now, "")
		}
		switch j.GetStatus().GetState() {
		case batchpb.JobStatus_CANCELLATION_IN_PROGRESS:
			if err := s.setJobState(tx, j, batchpb.JobStatus_CANCELLED, "", now); err != nil {
				return err
			}
			if err := s.finishTasks(tx, j, now, "Task was cancelled."); err != nil {
				return err
			}
			if err := put(tx.Bucket(bJobs), []byte(jobName), j); err != nil {
				return err
			}
		case batchpb.JobStatus_DELETION_IN_PROGRESS:
			if err := s.deleteJob(tx, jobName); err != nil {
				return err
			}
		}
		return s.finishOps(tx, jobName, now, "")
	})
}

func (s *Store) deleteJob(tx *bolt.Tx, jobName string) error {
	if err := tx.Bucket(bJobs).Delete([]byte(jobName)); err != nil {
		return err
	}
	if err := tx.Bucket(bRunning).Delete([]byte(jobName)); err != nil {
		return err
	}
	prefix := taskPrefix(jobName)
	c := tx.Bucket(bTasks).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// finishOps marks the job's pending operations done; errMsg, when set,
// fails them instead.
func (s *Store) finishOps(tx *bolt.Tx, jobName string, now time.Time, errMsg string) error {
	prefix := []byte(jobName + "\x00")
	jo := tx.Bucket(bJobOps)
	ops := tx.Bucket(bOps)
	var keys [][]byte
	c := jo.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		opName := k[len(prefix):]
		op, ok, err := get(ops, opName, new(longrunningpb.Operation))
		if err != nil {
			return err
		}
		if ok && !op.Done {
			md := new(batchpb.OperationMetadata)
			if op.Metadata != nil {
				_ = op.Metadata.UnmarshalTo(md)
			}
			md.EndTime = timestamppb.New(now)
			if op.Metadata, err = anypb.New(md); err != nil {
				return err
			}
			op.Done = true
			if errMsg != "" {
				op.Result = &longrunningpb.Operation_Error{Error: statusProto(13, errMsg)}
			} else {
				var resp proto.Message = &emptypb.Empty{}
				if md.Verb == VerbCancel {
					resp = &batchpb.CancelJobResponse{}
				}
				a, err := anypb.New(resp)
				if err != nil {
					return err
				}
				op.Result = &longrunningpb.Operation_Response{Response: a}
			}
			if err := put(ops, opName, op); err != nil {
				return err
			}
		}
		if err := jo.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// GetOperation returns a long-running operation, or ErrNotFound.
func (s *Store) GetOperation(ctx context.Context, name string) (*longrunningpb.Operation, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var op *longrunningpb.Operation
	err := s.db.View(func(tx *bolt.Tx) error {
		o, ok, err := get(tx.Bucket(bOps), []byte(name), new(longrunningpb.Operation))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: operation %q", ErrNotFound, name)
		}
		op = o
		return nil
	})
	return op, err
}

// DeleteOperation forgets an operation (the long-running operations API's
// DeleteOperation); it does not affect the job.
func (s *Store) DeleteOperation(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		ops := tx.Bucket(bOps)
		if ops.Get([]byte(name)) == nil {
			return fmt.Errorf("%w: operation %q", ErrNotFound, name)
		}
		return ops.Delete([]byte(name))
	})
}

// ListOperations lists the operations under parent
// ("projects/P/locations/L"), newest first by name order of creation.
// Filters are not supported (ErrInvalidArgument).
func (s *Store) ListOperations(ctx context.Context, parent string, q ListQuery) ([]*longrunningpb.Operation, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	if strings.TrimSpace(q.Filter) != "" {
		return nil, "", fmt.Errorf("%w: filter: operations cannot be filtered", ErrInvalidArgument)
	}
	if q.OrderBy != "" {
		return nil, "", fmt.Errorf("%w: orderBy: operations are listed in name order", ErrInvalidArgument)
	}
	var all []*longrunningpb.Operation
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := []byte(parent + "/operations/")
		c := tx.Bucket(bOps).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			op := new(longrunningpb.Operation)
			if err := proto.Unmarshal(v, op); err != nil {
				return fmt.Errorf("store: corrupt operation %q: %w", k, err)
			}
			all = append(all, op)
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return paginate(all, q, "", []orderKey[*longrunningpb.Operation]{{get: func(o *longrunningpb.Operation) sortVal { return sortVal{s: o.Name} }}})
}
