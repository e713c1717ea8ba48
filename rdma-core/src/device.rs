pub fn devices(){} pub struct GidEntry; pub struct GidType; pub struct DeviceInfo; pub struct PortInfo; pub struct PortSelection;
