// Package logs keeps the output of Batch tasks in the data dir and reads it
// back, optionally following it while the task runs.
//
// # Layout
//
// Each task has a directory root/PROJECT/LOCATION/JOB/task-N holding
// output.log (stdout and stderr interleaved line by line, what
// `riffle batch jobs logs` shows), stdout.log and stderr.log (each stream
// alone, byte for byte). Every runnable of every attempt appends to the
// same files, so a retried task shows all its attempts in order. A file
// named done appears in the task directory when the task reaches a final
// state, and in the job directory when the job does: that is how a
// follower knows to stop, even in another process.
//
// Lines rather than bytes are the unit of output.log (and of a
// logsPolicy PATH file shared by all tasks of a job), so output from
// parallel runnables never tears a line in half; a partial last line is
// written when its writer closes.
//
// Nothing here knows about runnables or containers: the scheduler hands
// the writers to whatever produces output.
package logs
