using System.Text;
using CsCheck;

namespace Canopy.Mvcc.Tests;

/// <summary>
/// Runs a property over a fixed list of CsCheck seeds (one case per seed), so every run checks the same cases and a
/// failure names a seed that replays it. Same scheme as the storage tests.
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

/// <summary>Byte helpers with an ordering written out by hand, independent of the code under test.</summary>
internal static class Bytes
{
    public static byte[] S(string ascii) => Encoding.ASCII.GetBytes(ascii);

    public static string Hex(byte[]? bytes) => bytes is null ? "null" : bytes.Length == 0 ? "[]" : Convert.ToHexString(bytes);

    public static int NaiveCompare(byte[] x, byte[] y)
    {
        for (var i = 0; i < x.Length && i < y.Length; i++)
        {
            if (x[i] != y[i])
            {
                return x[i] < y[i] ? -1 : 1;
            }
        }

        return x.Length.CompareTo(y.Length);
    }

    public static IComparer<byte[]> NaiveComparer { get; } = Comparer<byte[]>.Create(NaiveCompare);
}

/// <summary>A fresh, empty directory under the system temp directory, deleted (with its contents) on dispose.</summary>
internal sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "canopy-mvcc-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}
