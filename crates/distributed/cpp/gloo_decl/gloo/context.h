// See gloo/decl.h: the wheel lacks gloo headers; declarations are enough here.
#pragma once
#include <gloo/decl.h>
