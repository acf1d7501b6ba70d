namespace Canopy.Simulation;

/// <summary>
/// A seeded, single-threaded discrete-event loop in virtual time (microseconds). Events at the same time run
/// in the order they were scheduled, so a seed replays identically in any process.
/// </summary>
public sealed class SimLoop(int seed)
{
    private readonly PriorityQueue<Action, (long Time, long Seq)> _queue = new();
    private long _seq;

    /// <summary>A seed normally runs 10–60 thousand events with at most a few thousand pending.</summary>
    public const long MaxSteps = 400_000;

    public const int MaxPending = 100_000;

    /// <summary>
    /// Messages a seed may send in all (a Raft or range seed normally sends under 40 thousand). Events alone do not
    /// bound a storm: one event delivers a whole batch, and a batch can grow without bound (a planted bug once grew
    /// batches to 50 thousand appends, each answered by several, in a few hundred events: minutes and gigabytes).
    /// </summary>
    public const long MaxMessages = 1_000_000;

    /// <summary>Log entries a seed may send in all, inside its messages (normally under 15 thousand).</summary>
    public const long MaxEntries = 10_000_000;

    private long _messages;
    private long _entries;

    /// <summary>Virtual time in microseconds.</summary>
    public long Now { get; private set; }

    /// <summary>The only random source of the simulation.</summary>
    public Random Random { get; } = new(seed);

    public long Steps { get; private set; }

    public int Pending => _queue.Count;

    public void At(long time, Action action) => _queue.Enqueue(action, (Math.Max(time, Now), _seq++));

    public void After(long delayMicros, Action action) => At(Now + delayMicros, action);

    /// <summary>Runs events up to <paramref name="until"/>; after each, calls <paramref name="afterStep"/> (the checker).
    /// Returns false if <paramref name="afterStep"/> asked to stop.</summary>
    public bool RunUntil(long until, Func<bool> afterStep)
    {
        while (_queue.TryPeek(out _, out var key) && key.Time <= until)
        {
            if (_queue.Count > MaxPending || Steps > MaxSteps)
            {
                // A message storm or a livelock: a violation in itself, and it must not eat the machine's memory.
                throw new SimViolation($"runaway: {Steps} events run, {_queue.Count} pending (limits {MaxSteps}, {MaxPending})");
            }

            var action = _queue.Dequeue();
            Now = key.Time;
            action();
            Steps++;
            if (!afterStep())
            {
                return false;
            }
        }

        Now = Math.Max(Now, until);
        return true;
    }

    /// <summary>
    /// Counts a batch of <paramref name="messages"/> carrying <paramref name="entries"/> log entries about to be sent;
    /// past <see cref="MaxMessages"/> or <see cref="MaxEntries"/> the seed ends as a runaway (at once: the batch may
    /// be part of a storm growing within one event).
    /// </summary>
    public void CountSent(int messages, long entries)
    {
        _messages += messages;
        _entries += entries;
        if (_messages > MaxMessages || _entries > MaxEntries)
        {
            throw new SimViolation($"runaway: {_messages} messages carrying {_entries} entries sent in {Steps} events (limits {MaxMessages}, {MaxEntries}; this batch {messages} messages)");
        }
    }

    public double NextDouble() => Random.NextDouble();

    public bool Chance(double p) => Random.NextDouble() < p;

    public long Between(long lo, long hi) => lo >= hi ? lo : lo + (long)(Random.NextDouble() * (hi - lo));
}
