using CsCheck;
using Microsoft.Extensions.Time.Testing;

namespace Canopy.Clock.Tests;

/// <summary>
/// Runs a property over a fixed list of CsCheck seeds (one case per seed), so every run of the suite checks the same
/// cases and a failure names a seed that replays it. Same scheme as the storage tests.
/// </summary>
internal static class Seeds
{
    public static void ForSeeds<T>(Gen<T> gen, int count, ulong salt, Action<T> test, Func<T, string>? print = null)
    {
        for (var i = 0; i < count; i++)
        {
            var seed = new PCG(1, (salt << 32) + (ulong)i).ToString();
            gen.Sample(test, seed: seed, iter: 1, threads: 1, print: print);
        }
    }
}

/// <summary>
/// A <see cref="FakeTimeProvider"/> whose reading can also jump backwards (as a physical clock does when NTP steps it):
/// FakeTimeProvider itself refuses to go back in time, so the backward part is an offset added on top.
/// </summary>
internal sealed class SteppableTimeProvider : FakeTimeProvider
{
    public SteppableTimeProvider()
        : base(new DateTimeOffset(2024, 11, 25, 7, 33, 20, TimeSpan.Zero))
    {
    }

    /// <summary>Added to the fake time; negative values put the clock behind where it was.</summary>
    public TimeSpan Step { get; set; }

    /// <summary>Moves the reading by <paramref name="delta"/>, forwards or backwards.</summary>
    public void Jump(TimeSpan delta)
    {
        if (delta >= TimeSpan.Zero)
        {
            Advance(delta);
        }
        else
        {
            Step += delta;
        }
    }

    public override DateTimeOffset GetUtcNow() => base.GetUtcNow() + Step;
}
