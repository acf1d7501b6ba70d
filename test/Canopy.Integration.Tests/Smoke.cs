namespace Canopy.Integration.Tests;

public class Smoke
{
    [Fact]
    public void Nothing() => Assert.True(true);
}
