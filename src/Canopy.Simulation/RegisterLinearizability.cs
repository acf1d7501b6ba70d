// A linearizability checker for single-register histories (Porcupine's method, after Wing & Gong and Lowe)
// ======================================================================================================
//
// A history is a set of operations on one register, each with the real-time stamps of its invocation and of its
// response. It is linearizable if the operations can be put in one order that (a) respects real time: an operation
// that returned before another was invoked comes first, and (b) is legal for a register: every read returns the
// value of the latest write before it (0 = never written).
//
// Search (WGL with memoization): walk the invocation/response events in time order; at an invocation, try to
// linearize that operation now (if legal in the current state), remembering (set of linearized ops, state) so
// that no configuration is explored twice; at a response of an operation not yet linearized, backtrack.
//
// Writes carry unique values (the simulation gives every write its writer's identity), which keeps the search
// small. An ambiguous write (the client gave up: it may or may not have happened) has no response: it may take
// effect at any point after its invocation or never. One whose value no read returned is dropped (taking effect
// last, after everything, is always possible and changes nothing observable); one whose value was read stays,
// with its response at infinity.
namespace Canopy.Simulation;

/// <summary>One operation on a register. <see cref="Return"/> = <see cref="long.MaxValue"/>: no response (an ambiguous write).</summary>
/// <param name="IsWrite">A write of <paramref name="Value"/>; else a read that returned <paramref name="Value"/>.</param>
/// <param name="Value">The value written (unique, not 0) or read (0: the register was never written).</param>
/// <param name="Invoke">Real-time stamp of the invocation (all stamps of a history distinct, except long.MaxValue).</param>
/// <param name="Return">Real-time stamp of the response.</param>
/// <param name="Label">A description for reports (who, when, where).</param>
public readonly record struct RegisterOp(bool IsWrite, long Value, long Invoke, long Return, string Label)
{
    public override string ToString() => $"{(IsWrite ? "write" : "read")} {Value} [{Invoke}, {(Return == long.MaxValue ? "?" : Return.ToString(System.Globalization.CultureInfo.InvariantCulture))}] {Label}";
}

/// <summary>Outcome of a check.</summary>
public enum LinearizabilityOutcome
{
    Linearizable,
    Violation,

    /// <summary>The search ran out of its step budget (neither proven nor refuted).</summary>
    Unknown,
}

/// <summary>The result of <see cref="RegisterLinearizability.Check"/>.</summary>
public sealed record LinearizabilityResult(LinearizabilityOutcome Outcome, string? Detail, long Steps);

/// <summary>Checks register histories for linearizability (see the file header).</summary>
public static class RegisterLinearizability
{
    public static LinearizabilityResult Check(IReadOnlyList<RegisterOp> history, long maxSteps = 5_000_000)
    {
        ArgumentNullException.ThrowIfNull(history);

        // Cheap necessary conditions first (they also give the clearest reports).
        var writes = new Dictionary<long, RegisterOp>();
        foreach (var op in history)
        {
            if (op.Return < op.Invoke)
            {
                throw new ArgumentException($"operation returns before it is invoked: {op}");
            }

            if (op.IsWrite)
            {
                if (op.Value == 0 || !writes.TryAdd(op.Value, op))
                {
                    throw new ArgumentException($"write values must be unique and non-zero: {op}");
                }
            }
        }

        var read = new HashSet<long>();
        foreach (var op in history.Where(o => !o.IsWrite && o.Value != 0))
        {
            if (!writes.TryGetValue(op.Value, out var w))
            {
                return new(LinearizabilityOutcome.Violation, $"{op} returned a value nobody wrote", 0);
            }

            if (op.Return < w.Invoke)
            {
                return new(LinearizabilityOutcome.Violation, $"{op} returned the value of {w} before that write was invoked", 0);
            }

            read.Add(op.Value);
        }

        var ops = history.Where(o => !(o.IsWrite && o.Return == long.MaxValue && !read.Contains(o.Value))).ToArray();
        return Search(ops, maxSteps);
    }

    private static LinearizabilityResult Search(RegisterOp[] ops, long maxSteps)
    {
        var n = ops.Length;
        if (n == 0)
        {
            return new(LinearizabilityOutcome.Linearizable, null, 0);
        }

        // Events 0..2n-1: op i's call is 2i, its return 2i+1. Head sentinel at 2n.
        var events = new int[2 * n];
        for (var i = 0; i < 2 * n; i++)
        {
            events[i] = i;
        }

        long Time(int e) => (e & 1) == 0 ? ops[e >> 1].Invoke : ops[e >> 1].Return;
        Array.Sort(events, (a, b) =>
        {
            var c = Time(a).CompareTo(Time(b));
            if (c != 0)
            {
                return c;
            }

            // Equal stamps only at infinity (returns of ambiguous writes), or a call and return of one op.
            c = (a & 1).CompareTo(b & 1);
            return c != 0 ? c : a.CompareTo(b);
        });

        var head = 2 * n;
        var next = new int[(2 * n) + 1];
        var prev = new int[(2 * n) + 1];
        var last = head;
        foreach (var e in events)
        {
            next[last] = e;
            prev[e] = last;
            last = e;
        }

        next[last] = -1;

        void Lift(int call)
        {
            next[prev[call]] = next[call];
            prev[next[call]] = prev[call]; // a call always has its return after it
            var ret = call + 1;
            next[prev[ret]] = next[ret];
            if (next[ret] >= 0)
            {
                prev[next[ret]] = prev[ret];
            }
        }

        void Unlift(int call)
        {
            var ret = call + 1;
            next[prev[ret]] = ret;
            if (next[ret] >= 0)
            {
                prev[next[ret]] = ret;
            }

            next[prev[call]] = call;
            prev[next[call]] = call;
        }

        var words = (n + 63) / 64;
        var bits = new ulong[words];
        var cache = new HashSet<CacheKey>();
        var stack = new Stack<(int Call, long State)>();
        long state = 0;
        long steps = 0;
        var deepest = -1;
        var stuckOp = -1;
        long stuckState = 0;
        var entry = next[head];
        while (next[head] >= 0)
        {
            if (++steps > maxSteps)
            {
                return new(LinearizabilityOutcome.Unknown, $"gave up after {maxSteps} steps over {n} operations", steps);
            }

            if ((entry & 1) == 0)
            {
                var i = entry >> 1;
                var op = ops[i];
                var legal = op.IsWrite || op.Value == state;
                var newState = op.IsWrite ? op.Value : state;
                if (legal)
                {
                    bits[i >> 6] |= 1UL << (i & 63);
                    if (cache.Add(new CacheKey((ulong[])bits.Clone(), newState)))
                    {
                        stack.Push((entry, state));
                        state = newState;
                        Lift(entry);
                        entry = next[head];
                        continue;
                    }

                    bits[i >> 6] &= ~(1UL << (i & 63));
                }

                entry = next[entry];
            }
            else
            {
                // The response of an operation that is not linearized yet: it cannot go any later. Backtrack.
                if (stack.Count > deepest)
                {
                    deepest = stack.Count;
                    stuckOp = entry >> 1;
                    stuckState = state;
                }

                if (stack.Count == 0)
                {
                    break;
                }

                var (call, st) = stack.Pop();
                state = st;
                var j = call >> 1;
                bits[j >> 6] &= ~(1UL << (j & 63));
                Unlift(call);
                entry = next[call];
            }
        }

        if (next[head] < 0)
        {
            return new(LinearizabilityOutcome.Linearizable, null, steps);
        }

        var stuck = ops[stuckOp];
        var holder = stuckState == 0 ? "nothing" : ops.First(o => o.IsWrite && o.Value == stuckState).ToString();
        return new(
            LinearizabilityOutcome.Violation,
            $"not linearizable ({n} operations): at best {deepest} of them linearize, then {stuck} cannot take effect before it returns (the register then holds {holder})",
            steps);
    }

    private readonly struct CacheKey : IEquatable<CacheKey>
    {
        private readonly ulong[] _bits;
        private readonly long _state;
        private readonly int _hash;

        public CacheKey(ulong[] bits, long state)
        {
            _bits = bits;
            _state = state;
            var h = new HashCode();
            foreach (var b in bits)
            {
                h.Add(b);
            }

            h.Add(state);
            _hash = h.ToHashCode();
        }

        public bool Equals(CacheKey other) => _hash == other._hash && _state == other._state && _bits.AsSpan().SequenceEqual(other._bits);

        public override bool Equals(object? obj) => obj is CacheKey k && Equals(k);

        public override int GetHashCode() => _hash;
    }
}
