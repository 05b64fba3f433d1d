import Accelerators
import KVM
import Testing

@Test func openingSoftGivesSoftKVM() throws {
    let hypervisor = try Hypervisor.open(.soft)
    #expect(hypervisor.accelerator == .soft)
    #expect(try hypervisor.apiVersion() == 12)
}

@Test func automaticTakesTheHostWhereItIsUsableAndSoftKVMOtherwise() throws {
    let hypervisor = try Hypervisor.open(.automatic)
    let hostUsable = (try? Hypervisor(accelerator: .host)) != nil
    #expect(hypervisor.accelerator == (hostUsable ? .host : .soft))
}

/// Module KVM cannot name SoftKVM (it is built on KVM): asking it for soft
/// says where SoftKVM is opened instead of pretending.
@Test func kvmModuleAloneRefusesSoftAndSaysWhereToOpenIt() throws {
    let error = try #require(throws: KVMError.self) { try Hypervisor(accelerator: .soft) }
    #expect(error.errno == .operationNotSupportedByDevice)
    #expect(error.message.contains("Hypervisor.open(.soft)"))
}
